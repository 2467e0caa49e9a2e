"""Fixtures for tests that drive real `pseudoserve serve` processes with tritonclient.

Reusable by every part's tests under tests/triton:
- `start_pseudoserve(args, ...)` starts `.venv/bin/pseudoserve serve <args> --grpc-port 0
  --metrics-port 0 --ready-file F`, waits (with a timeout) for F and returns a `ServerProcess`
  with the real ports; `ServerProcess.stop()` sends SIGTERM and waits.
- `write_classifier_repository(repo, name, version, ...)` writes the MLP classifier
  (64 -> 256 -> 256 -> 10, softmax) in Triton layout.
- fixture `pseudoserve` = a factory calling `start_pseudoserve` that stops every process it
  started at the end of the test; fixture `mlp_repo` = a repository with `mlp` version 1.

This process imports tritonclient, so it must never import `protos.inference_pb2` (see
docs/architecture.md, "the one-process rule"); `tests.fixtures.onnx_models` does not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.onnx_models import mlp_model, write_version

PSEUDOSERVE = ROOT / ".venv" / "bin" / "pseudoserve"
if not PSEUDOSERVE.exists():  # an environment where the package is installed elsewhere
    PSEUDOSERVE = Path(sys.executable).with_name("pseudoserve")


@dataclass
class ServerProcess:
    """A running `pseudoserve serve` subprocess and its ports."""

    proc: subprocess.Popen
    grpc_port: int
    metrics_port: int
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def start_pseudoserve(args: list[str], *, workdir: Path, env: dict[str, str] | None = None,
                      timeout: float = 60.0, command: str = "serve") -> ServerProcess:
    """Start `pseudoserve <command> <args>` on free ports and wait for its ready file."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"ready-{time.monotonic_ns()}.json"
    log_path = ready.with_suffix(".log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [str(PSEUDOSERVE), command, *args, "--grpc-port", "0", "--metrics-port", "0", "--ready-file", str(ready)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            raise TimeoutError(f"no ready file after {timeout} s:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return ServerProcess(proc, int(info["grpc_port"]), int(info["metrics_port"]), log_path, info)


def write_classifier_repository(repo: Path, name: str = "mlp", version: int = 1, *, config: str | None = None,
                                **mlp_kwargs) -> Path:
    """Write the MLP classifier as `<repo>/<name>/<version>/model.onnx` (+ config.pbtxt if given)."""
    write_version(repo, name, version, config=config, **mlp_kwargs)
    return repo


def reference_outputs(x, **mlp_kwargs):
    """In-process onnxruntime run of `mlp_model(**mlp_kwargs)` (the expected server output)."""
    import onnxruntime as ort

    session = ort.InferenceSession(mlp_model(**mlp_kwargs).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


@pytest.fixture
def pseudoserve(tmp_path: Path):
    """Factory fixture: `pseudoserve(args, env=None)` -> ServerProcess, stopped after the test."""
    started: list[ServerProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None, timeout: float = 60.0) -> ServerProcess:
        server = start_pseudoserve(args, workdir=tmp_path / "run", env=env, timeout=timeout)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def mlp_repo(tmp_path: Path) -> Path:
    """A repository with model `mlp` version 1 and no config.pbtxt (auto-completed)."""
    return write_classifier_repository(tmp_path / "models")
