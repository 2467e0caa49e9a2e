"""Every PromQL expression of the Grafana dashboard returns data from a real Prometheus scraping a
real service and a real trainer.

The flow is the demo's, shrunk: `pseudoserve bootstrap` trains version 1 from a few labeled
scikit-learn digits; `pseudoserve serve` and `pseudoserve trainer` run as subprocesses on loopback
(the service captures its traffic to the trainer); tritonclient plays unlabeled traffic, a few
batched requests and a few invalid ones (the error panels need errors); one self-training round
runs through the trainer's TriggerRound(wait=true); Debian's `prometheus` scrapes both /metrics
ports every second. Then each expression (Grafana variables replaced as in
tests/deploy/dashboard_queries.py) must return at least one finite sample through /api/v1/query.

Skipped when `prometheus` is not installed (`make prometheus` installs it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pseudoserve.demo import free_port, write_labeled
from tests.deploy.dashboard_queries import Query, queries
from tests.triton.conftest import PSEUDOSERVE, ROOT, ServerProcess, start_pseudoserve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "digits"


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Prometheus:
    """A `prometheus` process on a loopback port with its own config and TSDB folder."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        scrape = [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                  for job, port in targets.items()]
        config.write_text(json.dumps({"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                                                 "evaluation_interval": "1s"}, "scrape_configs": scrape}))
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return http_get(f"{self.url}/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        status, body = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"Prometheus rejected {expr!r}: {answer.get('error', body[:300])}")
        data = answer["data"]
        if data["resultType"] == "scalar":
            return [{"value": data["result"]}]
        return data["result"]

    def targets_up(self) -> bool:
        return all(float(r["value"][1]) == 1.0 for r in self.query("up")) and len(self.query("up")) == 2

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def finite_values(result: list[dict]) -> list[float]:
    values = [float(r["value"][1]) for r in result]
    return [v for v in values if math.isfinite(v)]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def processes():
    """Everything started by the test, stopped (SIGTERM, then kill) whatever happens."""
    started: list = []
    yield started
    for proc in reversed(started):
        proc.stop()


def start_trainer(args: list[str], workdir: Path, timeout: float = 120.0) -> ServerProcess:
    """`pseudoserve trainer` with the given ports (start_pseudoserve would force --grpc-port 0, and
    the service must know this port before the trainer starts)."""
    ready = workdir / "trainer.ready.json"
    log_path = workdir / "trainer.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(PSEUDOSERVE), "trainer", *args, "--ready-file", str(ready)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, timeout, "the trainer's ready file")
    except TimeoutError:
        proc.kill()
        proc.wait(timeout=10)
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"the trainer exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
    info = json.loads(ready.read_text())
    return ServerProcess(proc, int(info["grpc_port"]), int(info["metrics_port"]), log_path, info)


def play(url: str, X: np.ndarray, batch: int = 1) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    served = 0
    for start in range(0, len(X), batch):
        rows = np.ascontiguousarray(X[start:start + batch], dtype=np.float32)
        inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        client.infer(MODEL, [inp], client_timeout=30)
        served += len(rows)
    client.close()
    return served


def send_invalid(url: str, count: int) -> None:
    """Requests with a wrong feature count: INVALID_ARGUMENT, counted as failed requests."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    for _ in range(count):
        inp = grpcclient.InferInput("input", [1, 3], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer(MODEL, [inp], client_timeout=30)
    client.close()


def test_every_dashboard_expression_returns_data(workdir: Path, processes: list) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (`make prometheus`, or apt-get install prometheus)")
    import grpc
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from protos import trainer_pb2, trainer_pb2_grpc

    digits = load_digits()
    X, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    X_lab, X_traffic, y_lab, _ = train_test_split(X, y, train_size=100, stratify=y, random_state=0)
    X_seed, X_hold, y_seed, y_hold = train_test_split(X_lab, y_lab, test_size=0.4, stratify=y_lab, random_state=0)
    X_traffic = X_traffic[:400]
    labeled, holdout, repo = workdir / "labeled.csv", workdir / "holdout.csv", workdir / "repository"
    write_labeled(labeled, X_seed, y_seed)
    write_labeled(holdout, X_hold, y_hold)

    boot = subprocess.run([str(PSEUDOSERVE), "bootstrap", "--labeled", str(labeled), "--holdout", str(holdout),
                           "--label-column", "label", "--model-repository", str(repo), "--model", MODEL,
                           "--seed", "0", "--quiet"],
                          check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert boot.returncode == 0, boot.stdout[-3000:] + boot.stderr[-3000:]

    trainer_port = free_port()
    service = start_pseudoserve(["--model-repository", str(repo), "--trainer-address", f"127.0.0.1:{trainer_port}"],
                                workdir=workdir / "service", timeout=120)
    processes.append(service)
    trainer = start_trainer(["--store", str(workdir / "store.sqlite"), "--model-repository", str(repo),
                             "--service-address", service.url, "--grpc-port", str(trainer_port),
                             "--metrics-port", "0", "--model-name", MODEL, "--labeled", str(labeled),
                             "--holdout", str(holdout), "--label-column", "label",
                             "--reports-dir", str(workdir / "reports")], workdir)
    processes.append(trainer)
    prometheus = Prometheus(binary, workdir, {"pseudoserve-service": service.metrics_port,
                                              "pseudoserve-trainer": trainer.metrics_port})
    processes.append(prometheus)
    wait_until(prometheus.ready, 60, f"prometheus to be ready\n{prometheus.log()}")
    wait_until(prometheus.targets_up, 60, "both scrape targets to be up")

    served = play(service.url, X_traffic[:300]) + play(service.url, X_traffic[300:], batch=10)
    send_invalid(service.url, 5)
    channel = grpc.insecure_channel(f"127.0.0.1:{trainer_port}")
    control = trainer_pb2_grpc.TrainerStub(channel)
    wait_until(lambda: control.Status(trainer_pb2.StatusRequest(), timeout=10).unlabeled >= served, 60,
               f"the trainer to store the {served} captured samples")
    round_ = control.TriggerRound(trainer_pb2.TriggerRoundRequest(wait=True), timeout=600)
    assert round_.summary.outcome in ("promoted", "rejected"), round_.summary
    channel.close()
    play(service.url, X_traffic[:100])  # traffic after the round (served by the new version if promoted)

    # Poll: rate() needs two scrapes inside its window after the last event.
    pending: dict[str, Query] = {q.concrete: q for q in queries()}
    answers: dict[str, list[dict]] = {}

    def all_return_data() -> bool:
        for expr in list(pending):
            answers[expr] = prometheus.query(expr)
            if finite_values(answers[expr]):
                del pending[expr]
        return not pending

    try:
        wait_until(all_return_data, 60, "every dashboard expression to return data", interval=1.0)
    except TimeoutError:
        missing = "\n".join(f"- {q.panel} [{q.ref_id}]: {expr} -> {answers.get(expr)}" for expr, q in pending.items())
        pytest.fail(f"{len(pending)} of {len(queries())} dashboard expressions returned no finite data "
                    f"(round: {round_.summary.outcome}):\n{missing}")
