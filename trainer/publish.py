"""Publish model versions into the service's repository atomically, and roll back.

`publish_version` writes `model.onnx`, `model.pt` (torch checkpoint), `meta.json` and a `.complete`
marker into a hidden `<repo>/<model>/.tmp-<random>` folder, fsyncs every file and the folder, then
`os.rename`s it to `<repo>/<model>/<n>` (n = highest numeric folder + 1) and fsyncs the model
folder. A crash at any point leaves either no new version or a complete one; the service ignores
non-numeric folders, and the next publish removes stale `.tmp-*` folders. Publishers on one host
are serialised by an flock on `<repo>/<model>/.publish.lock`, so two never pick the same number.

`config.pbtxt` is written (atomically) only when the model has none: platform onnxruntime_onnx,
max_batch_size 64, dynamic_batching, and input/output names, FP32 and dims read from the ONNX file.

`rollback(repo, model, version)` republishes an earlier version's files as a NEW version number,
so that the service's default `latest` policy serves it after RepositoryModelLoad (or its poll);
its meta.json records `rolled_back_from`.

Checkpoints (`model.pt`) hold plain tensors/lists/dicts only, so `load_checkpoint` uses
`torch.load(weights_only=True)`. Called by `pseudoserve bootstrap`/`rollback` and the online trainer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pseudoserve.checkpoint/1"
COMPLETE_MARKER = ".complete"
MAX_BATCH_SIZE = 64


class PublishError(RuntimeError):
    """A version could not be published or rolled back."""


def version_numbers(model_dir: Path) -> list[int]:
    """Numeric version folders of a model, ascending (complete or not)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and p.name.isascii() and int(p.name) > 0)


@contextlib.contextmanager
def _publish_lock(model_dir: Path) -> Iterator[None]:
    with open(model_dir / ".publish.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def publish_version(repo: str | Path, model: str, *, onnx_path: str | Path, checkpoint: dict | None,
                    meta: dict, config=None) -> int:
    """Publish one version and return its number. `checkpoint` is saved with torch.save as
    model.pt (None: no model.pt); `config` is a `ModelConfig` written only if the model has no
    config.pbtxt yet (None: derived from the ONNX file)."""
    if not model or model.startswith(".") or "/" in model:
        raise PublishError(f"model: invalid model name {model!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise PublishError(f"onnx_path: {onnx_path} does not exist")
    model_dir = Path(repo) / model
    model_dir.mkdir(parents=True, exist_ok=True)
    with _publish_lock(model_dir):
        for stale in model_dir.glob(".tmp-*"):  # left by a crashed publisher (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            shutil.copyfile(onnx_path, tmp / "model.onnx")
            _fsync_path(tmp / "model.onnx")
            if checkpoint is not None:
                import torch

                with open(tmp / "model.pt", "wb") as fh:
                    torch.save(checkpoint, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            version = (version_numbers(model_dir) or [0])[-1] + 1
            _write_bytes(tmp / "meta.json", json.dumps({**meta, "version": version}, indent=2,
                                                       default=_json_default).encode())
            _write_bytes(tmp / COMPLETE_MARKER, b"")
            _fsync_path(tmp)
            if not (model_dir / "config.pbtxt").exists():
                _write_config(model_dir, config if config is not None else config_from_onnx(model, tmp / "model.onnx"))
            os.rename(tmp, model_dir / str(version))
            _fsync_path(model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("published %s version %d", model, version)
    return version


def _json_default(value: object) -> object:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"meta: {type(value).__name__} is not JSON serializable")


def config_from_onnx(model: str, onnx_path: Path):
    """A ModelConfig for an exported classifier: FP32 input/output dims from the graph."""
    import onnx

    from protos import model_config_pb2 as mc

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    config = mc.ModelConfig(name=model, platform="onnxruntime_onnx", max_batch_size=MAX_BATCH_SIZE)
    config.dynamic_batching.SetInParent()
    for tensors, target in ((graph.input, config.input), (graph.output, config.output)):
        for value in tensors:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim][1:]
            target.add(name=value.name, data_type=mc.TYPE_FP32, dims=dims)
    return config


def _write_config(model_dir: Path, config) -> None:
    from google.protobuf import text_format

    tmp = model_dir / f".config.pbtxt.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_bytes(tmp, text_format.MessageToString(config).encode())
        os.rename(tmp, model_dir / "config.pbtxt")
    finally:
        tmp.unlink(missing_ok=True)


def rollback(repo: str | Path, model: str, version: int) -> int:
    """Republish `version`'s files as a new version (served by a `latest` policy); returns it."""
    source = Path(repo) / model / str(version)
    if not (source / "model.onnx").is_file():
        available = version_numbers(Path(repo) / model)
        raise PublishError(f"{source}: no such version of {model!r} "
                           f"(available: {', '.join(map(str, available)) or 'none'})")
    meta = {}
    if (source / "meta.json").is_file():
        meta = json.loads((source / "meta.json").read_text())
    meta = {**meta, "rolled_back_from": version}
    checkpoint = load_checkpoint(source / "model.pt") if (source / "model.pt").is_file() else None
    return publish_version(repo, model, onnx_path=source / "model.onnx", checkpoint=checkpoint, meta=meta,
                           config=None)


def load_checkpoint(path: str | Path) -> dict:
    """A model.pt written by `publish_version` (plain tensors and containers only)."""
    import torch

    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise PublishError(f"{path}: not a pseudoserve checkpoint")
    return checkpoint


def make_checkpoint(*, classifier, preprocessor, class_names, feature_names, settings=None, **extra) -> dict:
    """The model.pt contents: classifier state (arch + weights), preprocessor state, names, the
    engine settings and any extra plain values (round, seed, ...)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "classifier": classifier.state(),
        "preprocessor": preprocessor.state(),
        "class_names": [str(c) for c in class_names],
        "feature_names": [str(f) for f in feature_names],
        "settings": settings.model_dump(mode="json") if settings is not None else None,
        **extra,
    }


def export_and_publish(repo: str | Path, model: str, *, classifier, preprocessor, class_names, feature_names,
                       parity_sample, meta: dict, settings=None, **checkpoint_extra) -> tuple[int, float]:
    """Export (with the parity check) into a temp folder, then publish as the next version with
    model.pt from `make_checkpoint`; returns (version, parity max abs diff). Nothing is published
    when the export fails."""
    import tempfile

    from trainer.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="pseudoserve-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        diff = export_onnx(classifier, preprocessor, onnx_path, class_names=class_names,
                           feature_names=feature_names, parity_sample=parity_sample)
        checkpoint = make_checkpoint(classifier=classifier, preprocessor=preprocessor, class_names=class_names,
                                     feature_names=feature_names, settings=settings, **checkpoint_extra)
        version = publish_version(repo, model, onnx_path=onnx_path, checkpoint=checkpoint,
                                  meta={**meta, "parity_max_abs_diff": diff})
    return version, diff
