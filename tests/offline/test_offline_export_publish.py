"""Export and publish: the parity check fails loudly when the graph does not reproduce torch, a
publish is atomic (a failure at any step or a SIGKILL mid-publish leaves only complete versions,
and the next publish works), config.pbtxt is written once and the service's repository reads it,
and rollback republishes an earlier version as the newest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data.loaders import Table
from trainer.data.preprocess import Preprocessor
from trainer.export import ExportError, export_onnx
from trainer.publish import (
    PublishError,
    load_checkpoint,
    make_checkpoint,
    publish_version,
    rollback,
    version_numbers,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TinyClassifier:
    module: torch.nn.Module

    def state(self) -> dict:
        return {"state_dict": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}


class CallCounting(torch.nn.Module):
    """A realistic export bug: Python state read in forward() is frozen into the traced graph."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * self.calls


def table_and_preprocessor(tmp_path: Path) -> tuple[Table, Preprocessor]:
    X = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    t = Table(X=X, y=None, feature_names=["a", "b", "c"], class_names=None, kind="table", source=tmp_path / "t.csv")
    return t, Preprocessor().fit([t])


@pytest.fixture()
def exported(tmp_path: Path) -> tuple[Path, TinyClassifier, Preprocessor]:
    t, pre = table_and_preprocessor(tmp_path)
    torch.manual_seed(0)
    clf = TinyClassifier(torch.nn.Linear(3, 4))
    export_onnx(clf, pre, tmp_path / "model.onnx", class_names=list("wxyz"), feature_names=t.feature_names,
                parity_sample=t.X)
    return tmp_path / "model.onnx", clf, pre


def test_export_parity_failure_raises_and_writes_nothing(tmp_path: Path) -> None:
    t, pre = table_and_preprocessor(tmp_path)
    with pytest.raises(ExportError, match=r"ONNX output differs from torch: max abs diff .* > 0.0001"):
        export_onnx(TinyClassifier(CallCounting()), pre, tmp_path / "bad.onnx", class_names=list("wxyz"),
                    feature_names=t.feature_names, parity_sample=t.X)
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temp file


def test_export_refuses_wrong_class_names_and_low_opset(tmp_path: Path) -> None:
    t, pre = table_and_preprocessor(tmp_path)
    clf = TinyClassifier(torch.nn.Linear(3, 4))
    with pytest.raises(ExportError, match="class_names: 2 names for a model with 4 outputs"):
        export_onnx(clf, pre, tmp_path / "m.onnx", class_names=["a", "b"], feature_names=t.feature_names,
                    parity_sample=t.X)
    with pytest.raises(ExportError, match="opset: must be >= 17"):
        export_onnx(clf, pre, tmp_path / "m.onnx", class_names=list("wxyz"), feature_names=t.feature_names,
                    parity_sample=t.X, opset=13)


def complete_versions(model_dir: Path) -> list[int]:
    """Versions whose folder holds every published file with valid content."""
    good = []
    for v in version_numbers(model_dir):
        folder = model_dir / str(v)
        assert (folder / "model.onnx").is_file() and (folder / "meta.json").is_file(), f"partial version {v}"
        assert (folder / ".complete").is_file()
        assert json.loads((folder / "meta.json").read_text())["version"] == v
        load_checkpoint(folder / "model.pt")
        good.append(v)
    return good


def test_publish_writes_version_config_and_checkpoint(exported, tmp_path: Path) -> None:
    onnx_path, clf, pre = exported
    repo = tmp_path / "repo"
    ckpt = make_checkpoint(classifier=clf, preprocessor=pre, class_names=list("wxyz"), feature_names=list("abc"),
                           round=0)
    assert publish_version(repo, "m", onnx_path=onnx_path, checkpoint=ckpt, meta={"round": 0}) == 1
    assert publish_version(repo, "m", onnx_path=onnx_path, checkpoint=ckpt, meta={"round": 1}) == 2
    assert complete_versions(repo / "m") == [1, 2]
    loaded = load_checkpoint(repo / "m" / "2" / "model.pt")
    assert loaded["format"] == "pseudoserve.checkpoint/1" and loaded["preprocessor"]["fill"] == pre.fill
    assert Preprocessor.from_state(loaded["preprocessor"]).output_shape == (3,)
    from service.config import read_config
    from service.repository import ModelRepository

    config = read_config(repo / "m")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("probabilities", [4])]
    assert ModelRepository(repo).versions("m", stable=True) == [1, 2]  # .complete marker: no settling wait
    with pytest.raises(PublishError, match="model: invalid model name '../x'"):
        publish_version(repo, "../x", onnx_path=onnx_path, checkpoint=None, meta={})


@pytest.mark.parametrize("failing", ["copyfile", "save", "fsync", "rename"])
def test_failure_at_each_step_leaves_no_partial_version(exported, tmp_path: Path, monkeypatch, failing: str) -> None:
    onnx_path, _, _ = exported
    repo = tmp_path / "repo"
    publish_version(repo, "m", onnx_path=onnx_path, checkpoint={"w": torch.zeros(2)}, meta={})
    from trainer import publish

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device (injected)")

    targets = {"copyfile": (publish.shutil, "copyfile"), "save": (torch, "save"),
               "fsync": (publish.os, "fsync"), "rename": (publish.os, "rename")}
    monkeypatch.setattr(*targets[failing], boom)
    with pytest.raises(OSError, match="injected"):
        publish_version(repo, "m", onnx_path=onnx_path, checkpoint={"w": torch.ones(2)}, meta={})
    monkeypatch.undo()
    assert complete_versions(repo / "m") == [1]
    assert not list((repo / "m").glob(".tmp-*"))
    assert publish_version(repo, "m", onnx_path=onnx_path, checkpoint={"w": torch.ones(2)}, meta={}) == 2


def test_sigkill_mid_publish_leaves_only_complete_versions(exported, tmp_path: Path) -> None:
    onnx_path, _, _ = exported
    repo = tmp_path / "repo"
    script = textwrap.dedent(f"""
        import torch
        from trainer.publish import publish_version
        big = {{"weights": torch.randn(1_000_000)}}  # ~4 MB so each publish takes a while
        while True:
            publish_version({str(repo)!r}, "m", onnx_path={str(onnx_path)!r}, checkpoint=big, meta={{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        # kill while a temp folder is being written (after a few complete publishes)
        while len(version_numbers(repo / "m")) < 3 or not list((repo / "m").glob(".tmp-*/model.onnx")):
            assert proc.poll() is None, "the publishing subprocess died"
            assert time.monotonic() < deadline, "no versions published within 120 s"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    before = complete_versions(repo / "m")
    assert before == list(range(1, len(before) + 1))
    nxt = publish_version(repo, "m", onnx_path=onnx_path, checkpoint=None, meta={})
    assert nxt == before[-1] + 1
    assert not list((repo / "m").glob(".tmp-*"))  # the crashed publisher's folder was cleaned up


def test_rollback_republishes_an_earlier_version(exported, tmp_path: Path) -> None:
    onnx_path, _, _ = exported
    repo = tmp_path / "repo"
    publish_version(repo, "m", onnx_path=onnx_path, checkpoint={"w": torch.zeros(3)}, meta={"round": 0})
    other = tmp_path / "other.onnx"
    other.write_bytes(onnx_path.read_bytes())
    publish_version(repo, "m", onnx_path=other, checkpoint={"w": torch.ones(3)}, meta={"round": 1})
    assert rollback(repo, "m", 1) == 3
    meta = json.loads((repo / "m" / "3" / "meta.json").read_text())
    assert meta == {"round": 0, "version": 3, "rolled_back_from": 1}
    assert (repo / "m" / "3" / "model.onnx").read_bytes() == (repo / "m" / "1" / "model.onnx").read_bytes()
    assert torch.equal(load_checkpoint(repo / "m" / "3" / "model.pt")["w"], torch.zeros(3))
    with pytest.raises(PublishError, match=r"no such version of 'm' \(available: 1, 2, 3\)"):
        rollback(repo, "m", 9)
