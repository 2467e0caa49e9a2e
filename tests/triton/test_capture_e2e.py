"""Capture end to end with real processes: `pseudoserve serve` with `--trainer-address` and a
collector-only `pseudoserve trainer`, driven by tritonclient.

- 2,000 requests land in the store as 2,000 unlabeled samples, each with the version that served
  it and the confidence the client saw; `pseudoserve status` reports them.
- The trainer is SIGKILLed while traffic flows and restarted on the same store: every request is
  served, everything acknowledged before the kill is in the file, and after the restart every
  request is stored exactly once.
- The trainer is down when the service starts: requests succeed, and the records arrive once the
  trainer comes up.

This module imports tritonclient, so it reads our trainer protos only (`protos.trainer_pb2` has no
`inference.*` symbols) and the store through sqlite3.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import PSEUDOSERVE, ROOT, start_pseudoserve

from pseudoserve.demo import free_port

pytestmark = pytest.mark.slow


class Trainer:
    """A collector-only `pseudoserve trainer` subprocess on a fixed port (so it can be restarted)."""

    def __init__(self, store: Path, port: int, workdir: Path) -> None:
        self.store, self.port, self.workdir = store, port, workdir
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Trainer:
        ready = self.workdir / f"trainer-{time.monotonic_ns()}.json"
        cmd = [str(PSEUDOSERVE), "trainer", "--store", str(self.store), "--grpc-port", str(self.port),
               "--metrics-port", "0", "--no-self-training", "--model-repository", str(self.workdir / "models"),
               "--ready-file", str(ready)]
        with open(self.workdir / "trainer.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError((self.workdir / "trainer.log").read_text()[-3000:])
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def processes(tmp_path: Path):
    """(start_service(trainer_port), Trainer) with everything stopped at the end."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    from conftest import write_classifier_repository

    repo = write_classifier_repository(tmp_path / "models", "mlp", 1)
    started = []

    def start_service(trainer_port: int, env: dict[str, str] | None = None):
        service = start_pseudoserve(["--model-repository", str(repo), "--trainer-address",
                                     f"127.0.0.1:{trainer_port}"], workdir=workdir, env=env)
        started.append(service)
        return service

    trainer = Trainer(tmp_path / "store.db", free_port(), workdir)
    yield start_service, trainer
    for service in started:
        service.stop()
    trainer.stop()


def _infer(client: grpcclient.InferenceServerClient, request_id: str, x: np.ndarray) -> tuple[str, float]:
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("mlp", [tensor], request_id=request_id, client_timeout=30)
    response = result.get_response()
    assert response.id == request_id
    return response.model_version, float(result.as_numpy("probabilities")[0].max())


def _metric(port: int, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.split()[-1])
    return 0.0


def _status(trainer: Trainer) -> dict:
    out = subprocess.run([str(PSEUDOSERVE), "status", "--address", f"127.0.0.1:{trainer.port}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _wait_stored(trainer: Trainer, n: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(trainer)
        if status["unlabeled"] >= n or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def _stored_rows(store: Path) -> list[tuple[str, str, float]]:
    con = sqlite3.connect(store)
    try:
        return con.execute("SELECT request_id, model_version, confidence FROM samples").fetchall()
    finally:
        con.close()


def test_2000_requests_become_2000_unlabeled_samples_with_versions_and_confidences(processes) -> None:
    start_service, trainer = processes
    trainer.start()
    service = start_service(trainer.port)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 1, 64)).astype(np.float32)
    seen: dict[str, tuple[str, float]] = {}
    with grpcclient.InferenceServerClient(service.url) as client:
        for i in range(2000):
            seen[f"e2e-{i}"] = _infer(client, f"e2e-{i}", X[i])
    status = _wait_stored(trainer, 2000)
    assert {k: status[k] for k in ("unlabeled", "labeled", "holdout", "feedback", "rounds")} == {
        "unlabeled": 2000, "labeled": 0, "holdout": 0, "feedback": 0, "rounds": 0}
    rows = _stored_rows(trainer.store)
    assert len(rows) == 2000
    for request_id, version, confidence in rows:
        assert (version, pytest.approx(confidence, rel=1e-6)) == seen[request_id]
    assert _metric(service.metrics_port, "pseudoserve_capture_acknowledged_total") == 2000
    assert _metric(service.metrics_port, "pseudoserve_capture_records_total", '{model="mlp"}') == 2000


def test_trainer_sigkill_mid_stream_loses_nothing_acknowledged_and_stores_nothing_twice(processes) -> None:
    start_service, trainer = processes
    trainer.start()
    service = start_service(trainer.port)
    sent: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client_loop(worker: int) -> None:
        rng = np.random.default_rng(worker)
        with grpcclient.InferenceServerClient(service.url) as client:
            i = 0
            while not stop.is_set() and i < 1500:
                request_id = f"w{worker}-{i}"
                try:
                    _infer(client, request_id, rng.normal(size=(1, 64)).astype(np.float32))
                    sent.append(request_id)
                except BaseException as e:  # noqa: BLE001 - a failed request fails the test below
                    failures.append(e)
                i += 1

    threads = [threading.Thread(target=client_loop, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while _metric(service.metrics_port, "pseudoserve_capture_acknowledged_total") < 300:
            assert time.monotonic() < deadline, "no acknowledgements"
            time.sleep(0.05)
        acknowledged = _metric(service.metrics_port, "pseudoserve_capture_acknowledged_total")
        trainer.kill()
        in_file = len(_stored_rows(trainer.store))
        assert in_file >= acknowledged  # acknowledged means committed
        time.sleep(0.5)  # traffic continues with the trainer down
        trainer.start()
    finally:
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures[:3]
    assert len(sent) == 3000
    _wait_stored(trainer, len(sent))
    ids = [r[0] for r in _stored_rows(trainer.store)]
    assert len(ids) == len(set(ids)), "a request was stored twice"
    assert set(ids) == set(sent)
    assert _metric(service.metrics_port, "pseudoserve_capture_reconnects_total") >= 1
    assert _metric(service.metrics_port, "pseudoserve_capture_dropped_total", '{reason="queue_full"}') == 0


def test_trainer_down_at_service_start_up(processes) -> None:
    start_service, trainer = processes
    service = start_service(trainer.port)  # nothing listens on the trainer port yet
    rng = np.random.default_rng(3)
    with grpcclient.InferenceServerClient(service.url) as client:
        for i in range(200):
            _infer(client, f"early-{i}", rng.normal(size=(1, 64)).astype(np.float32))
        # a request without an id gets one when it is captured (the key for SubmitLabels)
        tensor = grpcclient.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(rng.normal(size=(1, 64)).astype(np.float32))
        generated = client.infer("mlp", [tensor], client_timeout=30).get_response().id
    assert re.fullmatch(r"[0-9a-f]{16}-[1-9][0-9]*", generated), generated  # the process's prefix, a counter
    assert _metric(service.metrics_port, "pseudoserve_capture_acknowledged_total") == 0
    trainer.start()
    status = _wait_stored(trainer, 201)
    assert status["unlabeled"] == 201
    assert {r[0] for r in _stored_rows(trainer.store)} == {f"early-{i}" for i in range(200)} | {generated}
