"""The model repository on disk, in Triton's layout:

    <repo>/<model>/config.pbtxt          optional (auto-completed from the ONNX graph)
    <repo>/<model>/<version>/model.onnx  version = a positive integer folder name

Only numeric folder names are versions: hidden folders such as the trainer's `.tmp-*` publish
folders and anything else are ignored. A version folder counts when it holds the model file and
no `.incomplete` marker.

Polling mode (`scan(stable=True)`) must not load a folder that is still being written, so a
version is taken only when it is complete as above AND either holds a `.complete` marker file
(written last by the publisher) or its file listing (names, sizes, mtimes) is unchanged since the
previous scan. A folder renamed into place whole is therefore picked up at most one poll later (or
at once with the marker); a folder being filled in place waits until it stops changing.

Used by `service.manager` (which versions to load) and by the trainer (which number to publish
next: `next_version`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from protos import model_config_pb2 as mc
from service.config import read_config

log = logging.getLogger(__name__)

INCOMPLETE_MARKER = ".incomplete"
COMPLETE_MARKER = ".complete"
DEFAULT_MODEL_FILENAME = "model.onnx"


def is_version_name(name: str) -> bool:
    """True for folder names that are model versions: positive decimal integers."""
    return name.isdigit() and int(name) > 0 and name.isascii()


def select_versions(available: list[int], policy: mc.ModelVersionPolicy) -> list[int]:
    """The versions a version_policy serves out of `available` (Triton's default: latest 1)."""
    ordered = sorted(set(available))
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return ordered
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return ordered[-max(count, 1):] if ordered else []


@dataclass
class _Seen:
    signatures: dict[tuple[str, int], tuple] = field(default_factory=dict)


class ModelRepository:
    """Read-only view of a Triton-layout model repository folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._seen = _Seen()

    def model_names(self) -> list[str]:
        """Model folders (not hidden), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def has_model(self, name: str) -> bool:
        """Whether `<repo>/<name>` is a model folder."""
        return bool(name) and not name.startswith(".") and "/" not in name and (self.root / name).is_dir()

    def read_config(self, name: str) -> mc.ModelConfig | None:
        """The model's parsed config.pbtxt, None when absent (ConfigError when invalid)."""
        return read_config(self.root / name)

    def version_path(self, name: str, version: int, filename: str = DEFAULT_MODEL_FILENAME) -> Path:
        """Path of a version's model file."""
        return self.root / name / str(version) / filename

    def versions(self, name: str, filename: str = DEFAULT_MODEL_FILENAME, *, stable: bool = False) -> list[int]:
        """Complete version numbers of a model, ascending. With `stable`, also require a
        `.complete` marker or a file listing unchanged since the previous `stable` scan."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        found = []
        for entry in model_dir.iterdir():
            if not (entry.is_dir() and is_version_name(entry.name)):
                continue
            if not (entry / filename).is_file() or (entry / INCOMPLETE_MARKER).exists():
                continue
            version = int(entry.name)
            if stable and not (entry / COMPLETE_MARKER).exists():
                signature = _signature(entry)
                key = (name, version)
                previous = self._seen.signatures.get(key)
                self._seen.signatures[key] = signature
                if previous != signature:
                    log.debug("%s/%s changed since the last scan; waiting for it to settle", name, version)
                    continue
            found.append(version)
        return sorted(found)

    def latest_version(self, name: str, filename: str = DEFAULT_MODEL_FILENAME) -> int | None:
        """Highest complete version, or None."""
        versions = self.versions(name, filename)
        return versions[-1] if versions else None

    def next_version(self, name: str) -> int:
        """One more than the highest numeric version folder (complete or not)."""
        model_dir = self.root / name
        numbers = [int(p.name) for p in model_dir.iterdir() if is_version_name(p.name)] if model_dir.is_dir() else []
        return max(numbers, default=0) + 1


def _signature(folder: Path) -> tuple:
    items = []
    for path in sorted(folder.rglob("*")):
        try:
            st = path.stat()
        except FileNotFoundError:
            return ("vanished",)
        items.append((str(path.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(items)
