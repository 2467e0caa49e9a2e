"""The online self-training loop with real parts: a version bootstrapped by `pseudoserve bootstrap`,
a real inference server and a real trainer (both in this process, on free loopback ports), traffic
through the service's gRPC API, rounds run by TriggerRound and by the new-samples trigger, and the
drift trigger on a real SampleStore.

Engine settings are shrunk (few steps) so a round takes seconds; the gate is forced open or shut
through `promotion_margin`, since whether a tiny student beats its teacher is not what these
tests are about (the engine's own tests check the gate)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Self

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_digits

from protos import (
    inference_pb2,
    inference_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from pseudoserve.cli import main as cli
from pseudoserve.demo import free_port, write_labeled
from service.server import InferenceServer
from tests.fixtures.servers import make_settings
from tests.trainer.conftest import Captured, groups, make_record
from trainer.engine.settings import EngineSettings
from trainer.metrics import trainer_metrics
from trainer.online import OnlineTrainer
from trainer.server import TrainerProcess
from trainer.service_client import ServiceClient
from trainer.settings import TrainerSettings
from trainer.store import SampleStore

MODEL = "digits"
FAST = {"epochs": 3, "min_steps": 40, "max_steps": 80, "teacher_augmentations": 0, "graph_k": 5,
        "hidden_sizes": [64], "generator": "none", "seed": 0, "torch_threads": 1}


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory) -> dict:
    """Digits split into seed labels / holdout / pool, and version 1 published by the real CLI."""
    root = tmp_path_factory.mktemp("online")
    digits = load_digits()
    X, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    seed, hold, pool = order[:100], order[100:160], order[160:460]
    config = root / "fast.yaml"
    config.write_text(yaml.safe_dump(FAST))
    labeled, holdout = root / "labeled.csv", root / "holdout.csv"
    write_labeled(labeled, X[seed], y[seed])
    write_labeled(holdout, X[hold], y[hold])
    repo = root / "repo"
    assert cli(["bootstrap", "--labeled", str(labeled), "--holdout", str(holdout), "--label-column", "label",
                "--model-repository", str(repo), "--model", MODEL, "--config", str(config), "--quiet"]) == 0
    return {"root": root, "repo": repo, "labeled": labeled, "holdout": holdout, "pool": X[pool], "config": config}


def _engine_config(root: Path, name: str, **overrides) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**FAST, **overrides}))
    return path


class System:
    """A real service and a real trainer sharing a copy of the bootstrapped repository."""

    def __init__(self, data: dict, tmp_path: Path, engine_config: Path, **trainer_overrides) -> None:
        import shutil

        self.repo = tmp_path / "repo"
        shutil.copytree(data["repo"], self.repo)
        self.tmp = tmp_path
        self.data = data
        self.engine_config = engine_config
        self.trainer_overrides = trainer_overrides

    async def __aenter__(self) -> Self:
        service_port, trainer_port = free_port(), free_port()
        self.service = InferenceServer(make_settings(self.repo, grpc_port=service_port,
                                                     trainer_address=f"127.0.0.1:{trainer_port}"))
        await self.service.start()
        self.trainer = TrainerProcess(TrainerSettings(
            store=self.tmp / "store.sqlite", grpc_port=trainer_port, metrics_port=0, model_repository=self.repo,
            service_address=f"127.0.0.1:{service_port}", model_name=MODEL, labeled_file=self.data["labeled"],
            holdout_file=self.data["holdout"], label_column="label", engine_config_file=self.engine_config,
            reports_dir=self.tmp / "reports", **self.trainer_overrides), registry=CollectorRegistry())
        await self.trainer.start()
        self.service_channel = grpc.aio.insecure_channel(f"127.0.0.1:{service_port}")
        self.infer = inference_pb2_grpc.GRPCInferenceServiceStub(self.service_channel)
        self.trainer_channel = grpc.aio.insecure_channel(f"127.0.0.1:{trainer_port}")
        self.control = trainer_pb2_grpc.TrainerStub(self.trainer_channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.service_channel.close()
        await self.trainer_channel.close()
        await self.service.stop()
        await self.trainer.stop()

    async def predict(self, X: np.ndarray, *, capture: bool = True) -> tuple[np.ndarray, str]:
        request = inference_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
        request.raw_input_contents.append(np.ascontiguousarray(X, np.float32).tobytes())
        if not capture:
            request.parameters["capture"].bool_param = False
        reply = await self.infer.ModelInfer(request, timeout=30, wait_for_ready=True)
        proba = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(len(X), -1)
        return proba, reply.model_version

    async def play(self, X: np.ndarray) -> None:
        for row in X:
            await self.predict(row[None])

    async def wait_stored(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (await self.control.Status(trainer_pb2.StatusRequest(), timeout=10)).unlabeled < n:
            assert time.monotonic() < deadline, f"the trainer did not store {n} samples in {timeout:.0f} s"
            await asyncio.sleep(0.1)


async def test_promoted_round_is_published_loaded_and_reported(bootstrapped, tmp_path) -> None:
    config = _engine_config(tmp_path, "open", promotion_margin=-1.0, max_recall_drop=1.0)
    async with System(bootstrapped, tmp_path, config) as system:
        status = await system.control.Status(trainer_pb2.StatusRequest(), timeout=10)
        assert (status.labeled, status.holdout, status.active_version) == (100, 60, "1")
        await system.play(bootstrapped["pool"][:150])
        await system.predict(bootstrapped["pool"][150:160], capture=False)  # opted out: never stored
        await system.wait_stored(150)
        reply = await system.control.TriggerRound(trainer_pb2.TriggerRoundRequest(wait=True), timeout=300)
        summary = reply.summary
        assert (summary.round, summary.outcome, summary.teacher_version, summary.student_version) == (1, "promoted", "1", "2"), summary
        assert summary.pseudo_labels_accepted + summary.pseudo_labels_rejected == 150
        assert 0 < summary.student_holdout_accuracy <= 1 and summary.duration_seconds > 0
        # published atomically with everything the next round needs, and served
        version = system.repo / MODEL / "2"
        assert {p.name for p in version.iterdir()} >= {"model.onnx", "model.pt", "meta.json", ".complete"}
        assert not list((system.repo / MODEL).glob(".tmp-*"))
        _, served = await system.predict(bootstrapped["pool"][:1], capture=False)
        assert served == "2"
        status = await system.control.Status(trainer_pb2.StatusRequest(), timeout=10)
        assert status.unlabeled == 150 and status.rounds == 1 and status.active_version == "2"
        assert status.last_promotion.student_version == "2"
        # the round's report and the index
        report = Path(summary.report_path)
        assert report.is_file() and (report.parent / "report.json").is_file()
        assert all(p.stat().st_size > 1000 for p in report.parent.glob("*.png"))
        assert (tmp_path / "reports" / "index.html").is_file()
        rounds = (await system.control.ListRounds(trainer_pb2.ListRoundsRequest(), timeout=10)).rounds
        assert [r.outcome for r in rounds] == ["promoted"]
        # a second round takes the new version as its teacher
        reply = await system.control.TriggerRound(trainer_pb2.TriggerRoundRequest(wait=True), timeout=300)
        assert reply.summary.teacher_version == "2" and reply.summary.outcome == "promoted"


async def test_rejected_student_never_replaces_the_served_version(bootstrapped, tmp_path) -> None:
    config = _engine_config(tmp_path, "shut", promotion_margin=1.0)  # no student can be 100 points better
    async with System(bootstrapped, tmp_path, config) as system:
        await system.play(bootstrapped["pool"][:60])
        await system.wait_stored(60)
        summary = (await system.control.TriggerRound(trainer_pb2.TriggerRoundRequest(wait=True), timeout=300)).summary
        assert summary.outcome == "rejected" and "<" in summary.reason and summary.student_version == ""
        assert [p.name for p in (system.repo / MODEL).iterdir() if p.name.isdigit()] == ["1"]
        _, served = await system.predict(bootstrapped["pool"][:1], capture=False)
        assert served == "1"


async def test_round_with_an_empty_pool_fails_and_changes_nothing(bootstrapped, tmp_path) -> None:
    async with System(bootstrapped, tmp_path, bootstrapped["config"]) as system:
        summary = (await system.control.TriggerRound(trainer_pb2.TriggerRoundRequest(wait=True), timeout=60)).summary
        assert summary.outcome == "failed" and "pool is empty" in summary.reason
        _, served = await system.predict(bootstrapped["pool"][:1], capture=False)
        assert served == "1"


async def test_new_samples_trigger_a_round_by_themselves(bootstrapped, tmp_path) -> None:
    async with System(bootstrapped, tmp_path, bootstrapped["config"], round_min_new_samples=40) as system:
        await system.play(bootstrapped["pool"][:45])
        deadline = time.monotonic() + 120
        while not (await system.control.ListRounds(trainer_pb2.ListRoundsRequest(), timeout=10)).rounds:
            assert time.monotonic() < deadline, "no round started after 45 new samples (threshold 40)"
            await asyncio.sleep(0.2)


def _record(i: int, confidence: float) -> Captured:
    rest = (1 - confidence) / 9
    return make_record(f"r{i}", np.zeros(2), [confidence] + [rest] * 9, model=MODEL)


async def test_confidence_drift_triggers_a_round(tmp_path) -> None:
    store = SampleStore(tmp_path / "store.sqlite")
    settings = TrainerSettings(store=tmp_path / "store.sqlite", drift_threshold=0.3, drift_window=50, model_name=MODEL)

    async def store_call(fn):
        return fn()

    online = OnlineTrainer(settings, EngineSettings(), store, trainer_metrics(CollectorRegistry()),
                           ServiceClient("127.0.0.1:1"), store_call)
    rng = np.random.default_rng(0)
    store.add_captured(groups([_record(i, c) for i, c in enumerate(rng.uniform(0.9, 1.0, 50))]))
    assert await online._drift() is None  # first full window: the reference
    store.add_captured(groups([_record(100 + i, c) for i, c in enumerate(rng.uniform(0.9, 1.0, 50))]))
    assert await online._drift() is None  # same distribution
    store.add_captured(groups([_record(200 + i, c) for i, c in enumerate(rng.uniform(0.4, 0.7, 50))]))
    reason = await online._drift()
    assert reason is not None and "KS statistic" in reason
    store.close()
