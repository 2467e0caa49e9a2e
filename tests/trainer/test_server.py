"""The trainer process in-process on port 0: Collector stream acks after commit, the control API
(Status, SubmitLabels, ListUncertain with stored and rescored probabilities, TriggerRound
refused in collector-only mode, ListRounds), bearer tokens, health, metrics and reports HTTP."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import collector_pb2, collector_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.trainer.conftest import batch, make_record, random_records
from tests.trainer.helpers import start_trainer, write_softmax_model
from trainer.cli_online import status_dict


@pytest.fixture
async def trainer(tmp_path: Path):
    process = await start_trainer(tmp_path)
    yield process
    await process.stop(0.5)


def _channel(process) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{process.grpc_port}")


async def _stream(process, batches, metadata=None) -> list[collector_pb2.CaptureAck]:
    async with _channel(process) as channel:
        call = collector_pb2_grpc.CollectorStub(channel).Stream(iter(batches), metadata=metadata, timeout=20)
        return [ack async for ack in call]


async def test_collector_acks_each_batch_after_commit_and_dedups(trainer, tmp_path: Path) -> None:
    recs = random_records(30)
    batches = [batch(1, recs[:10], sender="t"),
               batch(2, recs[10:], sender="t"),
               batch(3, recs[5:15], sender="t")]  # a resend
    acks = await _stream(trainer, batches)
    assert [(a.batch_id, a.stored, a.duplicates, a.error) for a in acks] == [(1, 10, 0, ""), (2, 20, 0, ""),
                                                                               (3, 0, 10, "")]
    # acknowledged = committed: a second connection to the same file sees them all
    n = sqlite3.connect(tmp_path / "store.db").execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert n == 30


async def test_status_submit_labels_and_status_json(trainer) -> None:
    await _stream(trainer, [batch(1, random_records(5))])
    async with _channel(trainer) as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        reply = await stub.SubmitLabels(trainer_pb2.SubmitLabelsRequest(items=[
            trainer_pb2.LabelItem(request_id="req-2", label=1), trainer_pb2.LabelItem(request_id="req-99", label=0),
        ]), timeout=10)
        assert reply.accepted == 1 and list(reply.unknown_ids) == ["req-99"]
        status = await stub.Status(trainer_pb2.StatusRequest(), timeout=10)
    data = status_dict(status)
    assert {k: data[k] for k in ("unlabeled", "labeled", "holdout", "feedback", "rounds", "active_version")} == {
        "unlabeled": 4, "labeled": 0, "holdout": 0, "feedback": 1, "rounds": 0, "active_version": ""}
    json.dumps(data)
    # the label landed on the right sample: req-2's features
    X, y = trainer.store.labeled_arrays("feedback")
    np.testing.assert_array_equal(X[0], random_records(5)[2].x)
    assert y.tolist() == [1]


async def test_submit_labels_bad_item_is_invalid_argument_naming_the_field(trainer) -> None:
    async with _channel(trainer) as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitLabels(trainer_pb2.SubmitLabelsRequest(items=[
                trainer_pb2.LabelItem(request_id="a", label=0), trainer_pb2.LabelItem(request_id="b", label=-3)]),
                timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[1].label" in info.value.details()


MARGINS = [0.9, 0.05, 0.5, 0.01, 0.3, 0.7, 0.2]


def _record_with_margin(i: int, margin: float):
    top = (1 + margin) / 2
    return make_record(f"m-{i}", np.full(4, i, np.float32), [top, 1 - top, 0.0])


@pytest.mark.parametrize("strategy", ["margin", "least_confidence", "entropy", ""])
async def test_list_uncertain_returns_lowest_margin_samples_from_served_probabilities(trainer, strategy) -> None:
    await _stream(trainer, [batch(1, [_record_with_margin(i, m) for i, m in enumerate(MARGINS)])])
    async with _channel(trainer) as channel:
        reply = await trainer_pb2_grpc.TrainerStub(channel).ListUncertain(
            trainer_pb2.ListUncertainRequest(k=3, strategy=strategy), timeout=10)
    # with two non-zero classes all three strategies order like the margin
    assert [s.request_id for s in reply.samples] == ["m-3", "m-1", "m-6"]
    first = reply.samples[0]
    assert first.model_version == "1" and first.predicted_class == 0
    assert np.frombuffer(first.inputs[0].data, dtype=np.float32).tolist() == [3, 3, 3, 3]
    assert [s.score for s in reply.samples] == sorted((s.score for s in reply.samples), reverse=True)


async def test_list_uncertain_rescores_with_the_served_onnx_model(tmp_path: Path) -> None:
    # the served probabilities say every sample is certain; model version 2 disagrees
    weight = np.array([[1, 0], [0, 1], [0, 0], [0, 0]], dtype=np.float32)
    write_softmax_model(tmp_path / "repo" / "classifier" / "2" / "model.onnx", weight, np.zeros(2))
    process = await start_trainer(tmp_path)
    try:
        gaps = [3.0, 0.1, 1.0, 0.02, 2.0]  # logit differences -> the model's margin grows with the gap
        recs = [make_record(f"g-{i}", np.array([g, 0, 0, 0]), [0.99, 0.01], version="1") for i, g in enumerate(gaps)]
        await _stream(process, [batch(1, recs)])
        async with _channel(process) as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            reply = await stub.ListUncertain(trainer_pb2.ListUncertainRequest(k=2, strategy="margin"), timeout=10)
            status = await stub.Status(trainer_pb2.StatusRequest(), timeout=10)
        assert status.active_version == "2"
        assert [s.request_id for s in reply.samples] == ["g-3", "g-1"]
        assert all(s.model_version == "2" for s in reply.samples)
        p = np.exp([0.02, 0.0]) / np.exp([0.02, 0.0]).sum()
        np.testing.assert_allclose(reply.samples[0].probabilities, p, rtol=1e-5)
        np.testing.assert_allclose(reply.samples[0].score, 1 - (p[0] - p[1]), rtol=1e-5)
    finally:
        await process.stop(0.5)


@pytest.mark.parametrize("request_, field", [
    (trainer_pb2.ListUncertainRequest(k=3, strategy="random"), "strategy"),
    (trainer_pb2.ListUncertainRequest(k=100_000), "k"),
])
async def test_list_uncertain_rejects_bad_requests(trainer, request_, field) -> None:
    async with _channel(trainer) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await trainer_pb2_grpc.TrainerStub(channel).ListUncertain(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith(field)


async def test_trigger_round_refused_without_self_training_and_list_rounds_reads_the_store(trainer) -> None:
    trainer.store.record_round(trainer_pb2.RoundSummary(round=1, outcome="rejected", reason="holdout"))
    trainer.store.record_round(trainer_pb2.RoundSummary(round=2, outcome="promoted", student_version="2"))
    async with _channel(trainer) as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.TriggerRound(trainer_pb2.TriggerRoundRequest(wait=True), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "self-training is disabled" in info.value.details()
        rounds = await stub.ListRounds(trainer_pb2.ListRoundsRequest(), timeout=10)
        status = await stub.Status(trainer_pb2.StatusRequest(), timeout=10)
    assert [r.outcome for r in rounds.rounds] == ["rejected", "promoted"]
    assert status.rounds == 2 and status.last_promotion.student_version == "2"


async def test_bearer_token_guards_state_changing_rpcs_and_the_collector(tmp_path: Path) -> None:
    process = await start_trainer(tmp_path, auth_token="s3cret")
    try:
        async with _channel(process) as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            await stub.Status(trainer_pb2.StatusRequest(), timeout=10)  # reads stay open
            for metadata in (None, [("authorization", "Bearer wrong")]):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.SubmitLabels(trainer_pb2.SubmitLabelsRequest(), metadata=metadata, timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = await stub.SubmitLabels(trainer_pb2.SubmitLabelsRequest(
                items=[trainer_pb2.LabelItem(request_id="x", label=0)]),
                metadata=[("authorization", "Bearer s3cret")], timeout=10)
            assert list(ok.unknown_ids) == ["x"]
        # The refusal is read without writing: a client write that races the server's early
        # status is reported as INTERNAL by grpc.aio (grpc/grpc#36066), hiding the real code.
        async with _channel(process) as channel:
            call = collector_pb2_grpc.CollectorStub(channel).Stream(timeout=20)
            assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in await call.details()
        acks = await _stream(process, [batch(1, random_records(1))],
                             metadata=[("authorization", "Bearer s3cret")])
        assert acks[0].stored == 1
    finally:
        await process.stop(0.5)


async def test_health_metrics_and_reports_over_http(trainer, tmp_path: Path) -> None:
    async with _channel(trainer) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="pseudoserve.v1.Collector"), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await _stream(trainer, [batch(1, random_records(3))])
    (tmp_path / "reports" / "round-1").mkdir(parents=True)
    (tmp_path / "reports" / "round-1" / "index.html").write_text("<h1>round 1</h1>")
    base = f"http://127.0.0.1:{trainer.metrics_port}"
    def get(url: str) -> str:
        return urllib.request.urlopen(url, timeout=10).read().decode()

    metrics = await asyncio.to_thread(get, f"{base}/metrics")
    assert 'pseudoserve_trainer_samples{pool="unlabeled"} 3.0' in metrics
    assert "pseudoserve_trainer_stored_total 3.0" in metrics
    page = await asyncio.to_thread(get, f"{base}/reports/round-1/")
    assert "round 1" in page
    with pytest.raises(urllib.error.HTTPError):
        await asyncio.to_thread(get, f"{base}/reports/../store.db")
