"""The offline CLI end to end, as a user runs it (`python -m pseudoserve ...` subprocesses):
`fit` on a small slice of scikit-learn digits written as CSV produces an ONNX model that
onnxruntime runs on raw features above chance, with class names in its metadata, plus the
reports; malformed input is one line on stderr, exit 2 and nothing written; `bootstrap` publishes
a version the service's repository loads and whose model.pt rebuilds the classifier; `rollback`
republishes an earlier version, and with a running service it gets served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from trainer.export import read_metadata

ROOT = Path(__file__).resolve().parents[2]
FAST = "epochs: 3\nrounds: 1\nmin_steps: 40\nmax_steps: 80\nhidden_sizes: [32]\ntorch_threads: 1\n" \
       "teacher_augmentations: 0\n"


def pseudoserve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PSEUDOSERVE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pseudoserve", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def write_csv(path: Path, X: np.ndarray, y: np.ndarray | None) -> Path:
    header = [f"px{i}" for i in range(X.shape[1])] + (["digit"] if y is not None else [])
    rows = [",".join([f"{v:g}" for v in x] + ([str(int(t))] if y is not None else [])) for x, t in
            zip(X, y if y is not None else [None] * len(X))]
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("digits")
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    lab = np.concatenate([order[y[order] == k][:6] for k in range(10)])
    rest = rng.permutation(np.setdiff1d(order, lab))
    hold, pool = rest[:120], rest[120:420]
    (folder / "fast.yaml").write_text(FAST)
    return {"labeled": write_csv(folder / "labeled.csv", X[lab], y[lab]),
            "holdout": write_csv(folder / "holdout.csv", X[hold], y[hold]),
            "unlabeled": write_csv(folder / "unlabeled.csv", X[pool], None),
            "config": folder / "fast.yaml", "X_hold": X[hold], "y_hold": y[hold]}


def test_fit_end_to_end_on_digits(digits, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = pseudoserve("fit", "--labeled", str(digits["labeled"]), "--unlabeled", str(digits["unlabeled"]),
                       "--holdout", str(digits["holdout"]), "--label-column", "digit", "--config", str(digits["config"]),
                       "--seed", "3", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["labeled"] == 60 and summary["unlabeled"] == 300 and summary["rounds"] == 1
    for name in ("model.onnx", "model.pt", "fit.json", "report.html", "index.html", "rounds/1/report.json",
                 "rounds/1/report.html", "rounds/1/confusion.png"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".out.tmp-*"))
    meta = read_metadata(out / "model.onnx")
    assert meta["class_names"] == [str(k) for k in range(10)]
    assert meta["feature_names"] == [f"px{i}" for i in range(64)]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (proba,) = session.run(["probabilities"], {"input": digits["X_hold"].astype(np.float32)})  # raw pixels 0..16
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float((proba.argmax(axis=1) == digits["y_hold"]).mean())
    assert accuracy > 0.5, accuracy  # chance is 0.1
    assert accuracy == pytest.approx(json.loads((out / "fit.json").read_text())["holdout_accuracy"], abs=1e-6)


def test_fit_malformed_input_is_one_line_exit_2_and_writes_nothing(digits, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    lines = digits["unlabeled"].read_text().splitlines()
    lines[5] = lines[5].replace(",", ",x", 1)  # px1 of the record on line 6 is not a number
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = pseudoserve("fit", "--labeled", str(digits["labeled"]), "--unlabeled", str(bad), "--label-column", "digit",
                       "--config", str(digits["config"]), "--quiet", "--out", str(out))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    expected = (f"pseudoserve: error: {bad}:6:2: non-numeric value 'x{lines[5].split(',')[1][1:]}' "
                "in numeric column 'px1'")
    assert errors == [expected]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]
    (tmp_path / "cfg.yaml").write_text("epochs: 3\nwarp_speed: 9\n")
    proc = pseudoserve("fit", "--labeled", str(digits["labeled"]), "--unlabeled", str(digits["unlabeled"]),
                       "--label-column", "digit", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out))
    assert proc.returncode == 2 and "pseudoserve: error:" in proc.stderr and "warp_speed" in proc.stderr
    assert not out.exists() and "Traceback" not in proc.stderr


def test_bootstrap_publishes_a_loadable_version_and_rollback(digits, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    args = ["bootstrap", "--labeled", str(digits["labeled"]), "--holdout", str(digits["holdout"]), "--label-column",
            "digit", "--model-repository", str(repo), "--model", "digits", "--config", str(digits["config"]), "--quiet"]
    proc = pseudoserve(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["version"] == 1 and result["labeled"] == 60 and result["holdout"] == 120

    from service.repository import ModelRepository
    from trainer.data.preprocess import Preprocessor
    from trainer.engine import Classifier
    from trainer.publish import load_checkpoint

    repository = ModelRepository(repo)
    assert repository.versions("digits", stable=True) == [1]
    assert [tuple(i.dims) for i in repository.read_config("digits").input] == [(64,)]
    checkpoint = load_checkpoint(repo / "digits" / "1" / "model.pt")
    classifier = Classifier.from_state(checkpoint["classifier"])
    pre = Preprocessor.from_state(checkpoint["preprocessor"])
    X = digits["X_hold"].astype(np.float32)
    session = ort.InferenceSession(str(repo / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (proba,) = session.run(["probabilities"], {"input": X})
    assert np.abs(proba - classifier.predict_proba(pre.transform(X))).max() <= 1e-4
    meta = json.loads((repo / "digits" / "1" / "meta.json").read_text())
    assert meta["source"] == "bootstrap" and meta["holdout"]["accuracy"] == pytest.approx(result["holdout_accuracy"])

    again = pseudoserve(*args)
    assert again.returncode == 2 and "already has versions 1" in again.stderr
    proc = pseudoserve("rollback", "--model-repository", str(repo), "--model", "digits", "--to", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"model": "digits", "rolled_back_to": 1, "version": 2}
    proc = pseudoserve("rollback", "--model-repository", str(repo), "--model", "digits", "--to", "7")
    assert proc.returncode == 2 and "no such version of 'digits' (available: 1, 2)" in proc.stderr


@pytest.mark.slow
def test_rollback_with_a_running_service_serves_the_new_version(digits, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    proc = pseudoserve("bootstrap", "--labeled", str(digits["labeled"]), "--label-column", "digit",
                       "--model-repository", str(repo), "--model", "digits", "--config", str(digits["config"]),
                       "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "pseudoserve", "serve", "--model-repository", str(repo),
                               "--grpc-port", "0", "--metrics-port", "0", "--ready-file", str(ready)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert server.poll() is None, server.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the service did not become ready within 120 s"
            time.sleep(0.1)
        port = json.loads(ready.read_text())["grpc_port"]
        proc = pseudoserve("rollback", "--model-repository", str(repo), "--model", "digits", "--to", "1",
                           "--service-address", f"127.0.0.1:{port}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout) == {"model": "digits", "rolled_back_to": 1, "version": 2,
                                           "served_version": "2"}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
