"""service.capture.Capture against a real collector: an in-process trainer on a real grpc.aio
port, or a `pseudoserve trainer` subprocess that is SIGKILLed mid-stream and restarted.

The record conversion (ids per row, probabilities, confidence, margin, truncation) is checked
against the numbers offered; the faults are real: nothing listening, a killed process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from prometheus_client import CollectorRegistry

from protos import collector_pb2, collector_pb2_grpc, inference_pb2, inference_pb2_grpc
from pseudoserve.demo import free_port
from service import capture as capture_module
from service.capture import (
    CONVERT_CHUNK,
    Capture,
    as_distribution,
    build_batch,
    samples_in,
)
from service.domain import InferInput
from service.server import InferenceServer
from tests.fixtures.onnx_models import typed_model, write_version
from tests.fixtures.servers import make_settings
from tests.trainer.helpers import eventually, start_trainer

ROOT = Path(__file__).resolve().parents[2]


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _input(x: np.ndarray, raw: bool = True, name: str = "input", datatype: str = "FP32") -> InferInput:
    """The InferInput the server decodes from a request carrying `x` as raw bytes (or as typed
    contents, raw=False)."""
    return InferInput(name, datatype, x.shape, x, x.tobytes() if raw else None)


def _queued(timestamp_ns: int, request_id: str, version: str, inputs: list[InferInput],
            probs: np.ndarray | None, rows: int) -> tuple:
    """A queued request as `Capture.offer` queues it, for `build_batch`."""
    return capture_module.queue_item(timestamp_ns, request_id, "m", version, inputs, probs, rows)


def _offer(capture: Capture, request_id: str, rng: np.random.Generator, rows: int = 1, model: str = "classifier",
           version: str = "1", features: int = 4) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(rows, features)).astype(np.float32)
    logits = rng.normal(size=(rows, 3))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    capture.offer(request_id, model, version, [_input(x)], probs, rows)
    return x, probs


def test_build_batch_splits_rows_and_computes_confidence_and_margin() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]], dtype=np.float32)  # not distributions: softmaxed
    item = _queued(5, "r", "3", [_input(x)], logits, 2)
    one = _queued(6, "s", "3", [_input(x[:1])], logits[:1], 1)
    other = _queued(7, "t", "4", [_input(x[:1])], logits[:1], 1)
    groups, truncated = build_batch([item, one, other], max_record_bytes=1 << 20)
    assert truncated == 0 and [(g.model_version, list(g.request_ids)) for g in groups] == [("3", ["r#0", "r#1", "s"]),
                                                                                          ("4", ["t"])]
    group = groups[0]
    assert list(group.timestamp_ns) == [5, 5, 6] and group.classes == 3 and not group.truncated
    (column,) = group.inputs
    assert (column.name, column.datatype, list(column.shape), list(column.sizes)) == ("input", "FP32", [1, 4],
                                                                                      [16, 16, 16])
    assert column.data == x.tobytes() + x[:1].tobytes()
    p = as_distribution(np.concatenate([logits, logits[:1]]))
    np.testing.assert_allclose(np.frombuffer(group.probabilities, "<f4").reshape(3, 3), p, rtol=1e-6)
    top = np.sort(p, axis=1)[:, ::-1]
    assert list(group.predicted_class) == np.argmax(p, axis=1).tolist()
    np.testing.assert_allclose(group.confidence, top[:, 0], rtol=1e-6)
    np.testing.assert_allclose(group.margin, top[:, 0] - top[:, 1], rtol=1e-5)
    groups, truncated = build_batch([item, one], max_record_bytes=20)  # 16 input + 12 probability bytes each
    assert truncated == 3 and list(groups[0].truncated) == [0, 1, 2]
    assert groups[0].inputs[0].data == b"" and list(groups[0].inputs[0].sizes) == [0, 0, 0]
    assert len(groups[0].probabilities) == 3 * 3 * 4


def test_an_input_given_as_typed_contents_is_captured_as_its_raw_bytes_and_capped_by_them() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)  # 64 bytes
    probs = np.full((1, 3), 1 / 3, dtype=np.float32)  # 12 bytes
    item = _queued(1, "r", "1", [_input(x, raw=False)], probs, 1)
    groups, truncated = build_batch([item], max_record_bytes=50)
    assert truncated == 1 and list(groups[0].truncated) == [0] and groups[0].inputs[0].data == b""
    groups, truncated = build_batch([item], max_record_bytes=76)
    assert truncated == 0 and groups[0].inputs[0].data == x.tobytes()


def _samples_of(batch: collector_pb2.CaptureBatch) -> dict[str, tuple[str, bytes, np.ndarray]]:
    """request id -> (version, input bytes, probability row) of every sample a batch carries."""
    out = {}
    for group in batch.groups:
        (column,) = group.inputs
        probs = np.frombuffer(group.probabilities, "<f4").reshape(len(group.request_ids), group.classes)
        offsets = np.concatenate([[0], np.cumsum(column.sizes)])
        for i, request_id in enumerate(group.request_ids):
            assert request_id not in out, f"{request_id} sent twice"
            out[request_id] = (group.model_version, column.data[offsets[i]:offsets[i + 1]], probs[i])
    return out


@pytest.mark.parametrize("batch_size", [16, 1000])
async def test_common_and_other_requests_interleaved_reach_the_batches_as_offered(batch_size: int) -> None:
    """One-sample requests with one raw input (the common request, grouped without a per-input
    step) interleaved with multi-row, typed-contents and float64 requests and two versions: every
    sample reaches a batch once with its version, bytes and probabilities; batches hold whole
    requests. With 1,000 records a batch, one batch gathers many compacted chunks per group."""
    capture = Capture(f"127.0.0.1:{free_port()}", registry=CollectorRegistry(), batch_size=batch_size,
                      queue_size=1000)
    rng = np.random.default_rng(3)
    expected: dict[str, tuple[str, bytes, np.ndarray]] = {}
    for i in range(90):
        rows = 2 if i % 17 == 9 else 1
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        probs = rng.dirichlet(np.ones(3), size=rows).astype(np.float64 if i % 11 == 5 else np.float32)
        version = "2" if i % 13 == 0 else "1"
        capture.offer(f"q{i}", "m", version, [_input(x, raw=i % 7 != 3)], probs, rows)
        for r in range(rows):
            expected[f"q{i}" if rows == 1 else f"q{i}#{r}"] = (version, x[r].tobytes(), probs[r])
    assert len(capture._pending) == 90 and capture.depth() == len(expected)
    capture._stopping = True  # take everything, however few
    got, sizes = {}, []
    while (batch := await capture._take_batch()) is not None:
        sizes.append(samples_in(batch))
        got.update(_samples_of(batch))
        capture._unacked.clear()  # as if acknowledged
        capture._unacked_records = 0
    # a two-row request is never split, so a batch may overshoot by one
    assert all(batch_size <= n <= batch_size + 1 for n in sizes[:-1]) and sum(sizes) == len(expected)
    assert got.keys() == expected.keys()
    for request_id, (version, data, probs) in expected.items():
        assert got[request_id][0] == version and got[request_id][1] == data, request_id
        np.testing.assert_allclose(got[request_id][2], probs, rtol=1e-6)
    assert capture.depth() == 0


def _common(i: int, version: str = "1", features: int = 4, classes: int = 3) -> tuple:
    """A queued common request: one sample, one raw FP32 input, one float32 probability row."""
    x = np.full((1, features), i, dtype=np.float32)
    probs = np.full((1, classes), 1 / classes, dtype=np.float32)
    probs[0, i % classes] += 0.5
    return _queued(1000 + i, f"c{i}", version, [_input(x)], probs / probs.sum(), 1)


def _written(collect_fn, items: list[tuple]) -> bytes:
    """The CaptureGroups that `collect_fn` makes of `items`, serialized."""
    groups: dict = {}
    collect_fn(items, groups, 1 << 20)
    batch = collector_pb2.CaptureBatch()
    for group in groups.values():
        group.write(batch.groups)
    return batch.SerializeToString()


def test_a_chunk_of_uniform_common_requests_is_grouped_in_one_step_exactly_as_request_by_request() -> None:
    items = [_common(i) for i in range(40)]
    assert capture_module._collect_uniform(items, {}, 1 << 20)
    assert _written(capture_module.collect, items) == _written(capture_module._collect_each, items)
    groups: dict = {}  # a chunk added to a group the per-request path began
    capture_module._collect_each(items[:5], groups, 1 << 20)
    assert capture_module._collect_uniform(items[5:], groups, 1 << 20)
    (group,) = groups.values()
    assert group.ids == [f"c{i}" for i in range(40)] and group.timestamps == [1000 + i for i in range(40)]


@pytest.mark.parametrize("odd", [
    _queued(1, "two-rows", "1", [_input(np.ones((2, 4), np.float32))], np.full((2, 3), 1 / 3, np.float32), 2),
    _queued(1, "other-version", "2", [_input(np.ones((1, 4), np.float32))], np.full((1, 3), 1 / 3, np.float32), 1),
    _queued(1, "typed", "1", [_input(np.ones((1, 4), np.float32), raw=False)], np.full((1, 3), 1 / 3, np.float32), 1),
    _queued(1, "other-shape", "1", [_input(np.ones((1, 5), np.float32))], np.full((1, 3), 1 / 3, np.float32), 1),
    _queued(1, "two-inputs", "1", [_input(np.ones((1, 4), np.float32)), _input(np.ones((1, 4), np.float32), name="b")],
            np.full((1, 3), 1 / 3, np.float32), 1),
    _queued(1, "no-probabilities", "1", [_input(np.ones((1, 4), np.float32))], None, 1),
    _queued(1, "1-d", "1", [_input(np.ones((1, 4), np.float32))], np.full(3, 1 / 3, np.float32), 1),
    _queued(1, "other-classes", "1", [_input(np.ones((1, 4), np.float32))], np.full((1, 4), 1 / 4, np.float32), 1),
    _queued(1, "over-cap", "1", [_input(np.ones((1, 400), np.float32))], np.full((1, 3), 1 / 3, np.float32), 1),
], ids=lambda item: item[1])
def test_a_chunk_with_any_other_request_is_grouped_request_by_request(odd: tuple) -> None:
    items = [_common(i) for i in range(6)]
    items.insert(3, odd)
    groups: dict = {}
    assert not capture_module._collect_uniform(items, groups, 1024) and groups == {}
    assert _written(capture_module.collect, items) == _written(capture_module._collect_each, items)


def test_probability_blocks_are_stacked_whatever_their_type_and_layout() -> None:
    rng = np.random.default_rng(8)
    blocks = [rng.dirichlet(np.ones(4), size=k).astype(np.float32) for k in (1, 2, 1)]
    stacked = capture_module._stack_rows(blocks, 4, 4)
    assert stacked.dtype == np.float32 and np.array_equal(stacked, np.concatenate(blocks))
    mixed = [blocks[0], blocks[1].astype(np.float64), blocks[2]]  # float64: concatenated, upcast
    assert np.array_equal(capture_module._stack_rows(mixed, 4, 4), np.concatenate(mixed))
    wide = rng.random((2, 8), dtype=np.float32)
    strided = [blocks[0], wide[:, ::2], blocks[2]]  # a view without contiguous bytes
    assert np.array_equal(capture_module._stack_rows(strided, 4, 4), np.concatenate(strided))
    rows = [blocks[0].tobytes(), blocks[1], blocks[2].tobytes()]  # common requests' float32 rows as bytes
    assert np.array_equal(capture_module._stack_rows(rows, 4, 4), np.concatenate(blocks))
    with_float64 = [blocks[0].tobytes(), blocks[1].astype(np.float64), blocks[2].tobytes()]
    assert np.array_equal(capture_module._stack_rows(with_float64, 4, 4), np.concatenate(mixed))


def test_common_requests_are_queued_as_bytes_under_one_interned_key() -> None:
    """`queue_item` keeps of the common request its input bytes and a copy of its probability row,
    under a key that equal requests share as one object; any other request keeps references."""
    keys: dict = {}
    x, probs = np.ones((1, 4), np.float32), np.full((1, 3), 1 / 3, np.float32)
    first = capture_module.queue_item(1, "a", "m", "1", [_input(x)], probs, 1, keys)
    second = capture_module.queue_item(2, "b", "m", "1", [_input(x.copy())], probs.copy(), 1, keys)
    assert first[2] == ("m", "1", 3, "input", "FP32", (1, 4)) and second[2] is first[2] and len(keys) == 1
    assert first[3] == x.tobytes() and first[4] == probs.tobytes() and first[5] == 1
    for odd in (capture_module.queue_item(3, "c", "m", "1", [_input(x)], probs.astype(np.float64), 1, keys),
                capture_module.queue_item(4, "d", "m", "1", [_input(x, raw=False)], probs, 1, keys)):
        assert odd[2] is None and odd[3][:2] == ("m", "1") and odd[4] is not None


async def test_offer_served_queues_a_one_sample_request_under_its_versions_key_and_else_as_offer_does(
        tmp_path: Path) -> None:
    """Given the real model version that served a request, `offer_served` queues what `offer`
    (`queue_item`) would, whatever the version and the request: a one-sample request with raw bytes
    and a (1, classes) float32 probability row under the version's own key (`version_key`, one
    object per key), and any other request (typed contents, several rows, probabilities of another
    type or shape, a version whose requests may differ) under its own key or none; a model that
    capture filters out, or a stopped capture, queues nothing."""
    repo = tmp_path / "models"
    write_version(repo, "mlp", 1)
    write_version(repo, "plus", 1, typed_model("FP32"))  # x [batch, 4] -> y FP32 [batch, 4]
    write_version(repo, "plus64", 1, typed_model("FP64"))  # its float output is FP64: no version key
    unbatched = 'max_batch_size: 0\ninput {{ name: "input" data_type: TYPE_FP32 dims: [ {}, 64 ] }}'
    write_version(repo, "fixed", 1, config=unbatched.format(1))
    write_version(repo, "open", 1, config=unbatched.format(-1))
    write_version(repo, "plusint", 1, typed_model("INT32"))  # no float output: no probabilities
    pair = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", 4]) for name in ("a", "b", "y")]
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["a", "b"], ["y"])], "add", pair[:2], pair[2:])
    two = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    two.ir_version = 8
    write_version(repo, "two", 1, two)  # two inputs: a one-sample request is not a common one
    server = InferenceServer(make_settings(repo), CollectorRegistry())
    await server.start()
    try:
        versions = {name: server.dataplane.manager.get(name, "")
                    for name in ("mlp", "plus", "plus64", "fixed", "open", "plusint", "two")}
    finally:
        await server.stop()
    capture = Capture(f"127.0.0.1:{free_port()}", registry=CollectorRegistry(), queue_size=1000)
    keys = capture._keys
    assert capture_module.version_key(versions["mlp"], keys) == (("mlp", "1", 10, "input", "FP32", (1, 64)), (1, 10))
    assert capture_module.version_key(versions["plus"], keys) == (("plus", "1", 4, "x", "FP32", (1, 4)), (1, 4))
    fixed = ("fixed", "1", 10, "input", "FP32", (1, 64))
    assert capture_module.version_key(versions["fixed"], keys) == (fixed, (1, 10))
    assert capture_module.version_key(versions["plus64"], keys) == (None, None)
    assert capture_module.version_key(versions["open"], keys) == (None, None)  # a variable dimension
    assert capture_module.version_key(versions["plusint"], keys) == (None, None)
    assert capture_module.version_key(versions["two"], keys) == (None, None)
    odd = {"plusint": ([_input(np.ones((1, 4), np.int32), name="x", datatype="INT32")], None, 1),
           "two": ([_input(np.ones((1, 4), np.float32), name="a"), _input(np.ones((1, 4), np.float32), name="b")],
                   np.full((1, 4), 0.25, np.float32), 1)}

    def served(mv, probabilities: np.ndarray | None) -> list[np.ndarray]:  # the version's outputs
        outputs = [np.zeros((1, 4), np.int32) for _ in mv.outputs]
        if mv.prob_index is not None:
            outputs[mv.prob_index] = probabilities
        return outputs

    for model, (inputs, p, rows) in odd.items():  # queued as references, like any request of no key
        mv = versions.pop(model)
        mv.validate(inputs)
        capture.offer_served(model, mv, inputs, served(mv, p), rows)
        queued = capture._pending.pop()
        assert queued[1:3] == (model, None) and queued[3] == (model, "1", inputs) and queued[4] is p, model
    rng = np.random.default_rng(4)

    def requests(mv) -> dict[str, tuple[list[InferInput], np.ndarray, int]]:
        (spec,) = mv.inputs.values()
        width = spec.shape[-1]
        one, two = rng.random((1, width)).astype(spec.dtype), rng.random((2, width)).astype(spec.dtype)
        classes = mv.outputs[mv.prob_index].shape[-1]
        probs = rng.dirichlet(np.ones(classes), 2).astype(mv.outputs[mv.prob_index].dtype)
        name, datatype = spec.name, spec.datatype
        return {"common": ([_input(one, name=name, datatype=datatype)], probs[:1], 1),
                "equal strings": ([_input(one, name=name.encode().decode(), datatype=datatype.encode().decode())],
                                  probs[:1].copy(), 1),
                "typed contents": ([_input(one, raw=False, name=name, datatype=datatype)], probs[:1], 1),
                "two rows": ([_input(two, name=name, datatype=datatype)], probs, 2),
                "two rows, one probability row": ([_input(two, name=name, datatype=datatype)], probs[:1], 2),
                "float64 probabilities": ([_input(one, name=name, datatype=datatype)], probs[:1].astype(np.float64), 1),
                "other classes": ([_input(one, name=name, datatype=datatype)], probs[:1, :3].copy(), 1),
                "one-dimensional probabilities": ([_input(one, name=name, datatype=datatype)], probs[0], 1)}

    queued_as = {}
    for model, mv in versions.items():
        for name, (inputs, p, rows) in requests(mv).items():
            if model in ("fixed", "open") and rows > 1:
                continue  # no batching: one sample per request
            mv.validate(inputs)  # a request the version accepts, as the data plane checked it
            capture.offer_served(name, mv, inputs, served(mv, p), rows)
            expected = capture_module.queue_item(0, name, model, "1", inputs, p, rows, keys)
            queued = capture._pending[-1]
            assert queued[1:3] == expected[1:3] and queued[5] == expected[5], (model, name)
            if expected[2] is not None:  # a common request: its bytes, under the one interned key
                assert queued[2] is keys[expected[2]] and queued[3:5] == expected[3:5], (model, name)
            else:
                assert queued[3][:2] == expected[3][:2] and queued[3][2] is inputs and queued[4] is p, (model, name)
            queued_as[model, name] = queued[2]
    assert len(queued_as) == len(capture._pending) == 3 * 8 + 2 * 6
    for model in ("mlp", "plus", "fixed"):  # the version's own key (interned), for equal strings too
        key = capture_module.version_key(versions[model], keys)[0]
        assert queued_as[model, "common"] is key and queued_as[model, "equal strings"] is key, model
    registry = CollectorRegistry()
    filtered = Capture(f"127.0.0.1:{free_port()}", registry=registry, models=["plus"])
    inputs, p, _ = requests(versions["mlp"])["common"]
    filtered.offer_served("mlp", versions["mlp"], inputs, [p], 1)
    assert not filtered._pending and _value(registry, "pseudoserve_capture_records_total", model="mlp") == 0
    inputs, p, _ = requests(versions["plus"])["common"]
    filtered.offer_served("plus", versions["plus"], inputs, [p], 1)
    assert len(filtered._pending) == 1 and _value(registry, "pseudoserve_capture_records_total", model="plus") == 1
    await filtered.stop(0.1)
    filtered.offer_served("plus", versions["plus"], inputs, [p], 1)
    assert not filtered._pending and not filtered._warned  # stopped: nothing queued, nothing raised


async def test_requests_of_one_record_are_taken_in_one_step_and_the_rest_stays_queued_in_order() -> None:
    capture = Capture(f"127.0.0.1:{free_port()}", registry=CollectorRegistry(), batch_size=16, queue_size=1000)
    rng = np.random.default_rng(9)
    for i in range(40):
        _offer(capture, f"r{i}", rng)
    capture._stopping = True
    ids = []
    while (batch := await capture._take_batch()) is not None:
        ids.append([request_id for group in batch.groups for request_id in group.request_ids])
        capture._unacked.clear()  # as if acknowledged
        capture._unacked_records = 0
        if len(ids) == 1:
            _offer(capture, "late1", rng)  # offered between two batches
    assert ids == [[f"r{i}" for i in range(16)], [f"r{i}" for i in range(16, 32)],
                   [f"r{i}" for i in range(32, 40)] + ["late1"]]
    assert capture.depth() == 0


async def test_interned_keys_are_bounded_and_requests_still_group_by_equal_keys_after_a_reset() -> None:
    """Traffic with ever new input shapes (a model with a variable dimension) cannot grow the
    interned keys without bound; after a reset, equal keys still share their group."""
    capture = Capture(f"127.0.0.1:{free_port()}", registry=CollectorRegistry(), batch_size=10_000, queue_size=10_000)
    probs = np.full((1, 3), 1 / 3, np.float32)
    for width in range(1, capture_module.MAX_KEYS + 2):
        capture.offer(f"w{width}", "m", "1", [_input(np.ones((1, width), np.float32))], probs, 1)
    assert len(capture._keys) == capture_module.MAX_KEYS + 1
    await capture._convert()
    assert len(capture._keys) == 0 and len(capture._building) == capture_module.MAX_KEYS + 1
    capture.offer("again", "m", "1", [_input(np.ones((1, 1), np.float32))], probs, 1)
    await capture._convert()
    group = capture._building[("m", "1", 3, "input", "FP32", (1, 1))]
    assert group.ids == ["w1", "again"] and len(capture._building) == capture_module.MAX_KEYS + 1


async def test_served_requests_are_compacted_within_a_tick_and_sent_when_the_batch_is_full_or_old() -> None:
    """Of a common request only its bytes are queued (its arrays are freed with it); of any other
    the sender converts what is queued at every tick, so nothing of a served request is held after
    it; a batch is sent once it holds `batch_size` records, or once its oldest record is older
    than the flush interval."""
    capture = Capture(f"127.0.0.1:{free_port()}", registry=CollectorRegistry(), batch_size=8, queue_size=100,
                      flush_interval=0.3)
    rng = np.random.default_rng(10)

    def serve(request_id: str, rows: int = 1) -> weakref.ref:
        _, probs = _offer(capture, request_id, rng, rows=rows)
        return weakref.ref(probs)

    served = [serve(f"r{i}") for i in range(4)]
    assert all(ref() is None for ref in served)  # common requests: the data plane's arrays are not referenced
    held = serve("r4", rows=2)
    assert held() is not None  # any other request: referenced until the sender's next tick
    assert await capture._take_batch() is None  # 6 < 8 records, and young
    assert not capture._pending and capture._building_records == 6 and capture.depth() == 6
    assert held() is None  # compacted: nothing of the requests is held any more
    served += [serve(f"r{i}") for i in range(5, 8)]
    batch = await capture._take_batch()  # 8 records: full; the ninth waits for the next tick
    assert [request_id for group in batch.groups for request_id in group.request_ids] == [
        "r0", "r1", "r2", "r3", "r4#0", "r4#1", "r5", "r6"]
    assert len(capture._pending) == 1 and capture._building_records == 0
    assert await capture._take_batch() is None  # one record, young
    assert capture._building_records == 1
    await asyncio.sleep(0.35)
    batch = await capture._take_batch()  # old enough
    assert list(batch.groups[0].request_ids) == ["r7"] and capture._building_records == 0


async def test_overflow_drops_the_oldest_requests_and_keeps_the_newest_in_order() -> None:
    registry = CollectorRegistry()
    capture = Capture(f"127.0.0.1:{free_port()}", registry=registry, batch_size=10, queue_size=10)
    rng = np.random.default_rng(4)
    for i in range(15):
        _offer(capture, f"r{i}", rng)
    assert capture.depth() == 10
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="queue_full") == 5
    capture._stopping = True
    batch = await capture._take_batch()
    (group,) = batch.groups
    assert list(group.request_ids) == [f"r{i}" for i in range(5, 15)]
    assert len(group.inputs[0].data) == 10 * 16 and list(group.inputs[0].sizes) == [16] * 10


def test_probabilities_that_are_not_rows_of_classes_are_not_used() -> None:
    x = np.ones((1, 2), np.float32)
    for probs in (np.full((1, 3, 4), 1 / 12, np.float32), np.zeros((1, 0), np.float32)):  # 3-D; no class
        (group,), _ = build_batch([_queued(1, "r", "1", [_input(x)], probs, 1)], max_record_bytes=1 << 20)
        assert group.classes == 0 and list(group.predicted_class) == [-1] and group.inputs[0].data == x.tobytes()


def test_a_model_without_probabilities_yields_class_minus_one() -> None:
    item = _queued(1, "r", "1", [_input(np.arange(2).reshape(1, 2), datatype="INT64")], None, 1)
    (group,), _ = build_batch([item], max_record_bytes=1 << 20)
    assert group.classes == 0 and list(group.predicted_class) == [-1] and group.probabilities == b""
    batch = _queued(2, "b", "1", [_input(np.arange(6).reshape(3, 2), datatype="INT64")], None, 3)
    (group,), _ = build_batch([batch], max_record_bytes=1 << 20)  # still a record per row
    assert list(group.request_ids) == ["b#0", "b#1", "b#2"] and list(group.predicted_class) == [-1] * 3
    assert list(group.inputs[0].shape) == [1, 2] and list(group.inputs[0].sizes) == [16] * 3
    two_rows = _queued(3, "u", "1", [_input(np.ones((1, 2), np.float32))], np.full((2, 3), 1 / 3, np.float32), 1)
    (group,), _ = build_batch([two_rows], max_record_bytes=1 << 20)  # not a row per record: no probabilities
    assert list(group.request_ids) == ["u"] and group.classes == 0 and list(group.predicted_class) == [-1]


async def test_offered_requests_reach_the_store_with_ids_versions_and_confidences(tmp_path: Path) -> None:
    trainer = await start_trainer(tmp_path)
    registry = CollectorRegistry()
    capture = Capture(f"127.0.0.1:{trainer.grpc_port}", registry=registry, batch_size=16, flush_interval=0.01)
    await capture.start()
    rng = np.random.default_rng(1)
    try:
        expected = {}
        for i in range(40):
            rows = 3 if i % 10 == 0 else 1
            _, probs = _offer(capture, f"q{i}", rng, rows=rows, version=str(1 + i % 2))
            for r in range(rows):
                expected[f"q{i}" if rows == 1 else f"q{i}#{r}"] = (str(1 + i % 2), float(probs[r].max()))
        await eventually(lambda: trainer.store.counts()["unlabeled"] == len(expected), what="all records stored")
        await eventually(lambda: _value(registry, "pseudoserve_capture_acknowledged_total") == len(expected))
    finally:
        await capture.stop(5)
        await trainer.stop(0.5)
    con = sqlite3.connect(tmp_path / "store.db")
    stored = {rid: (v, c) for rid, v, c in con.execute("SELECT request_id, model_version, confidence FROM samples")}
    assert stored.keys() == expected.keys()
    for rid, (version, confidence) in expected.items():
        assert stored[rid][0] == version and stored[rid][1] == pytest.approx(confidence, rel=1e-6)
    assert _value(registry, "pseudoserve_capture_records_total", model="classifier") == len(expected)
    assert _value(registry, "pseudoserve_capture_sent_total") == len(expected)
    assert _value(registry, "pseudoserve_capture_queue_depth") == 0


async def test_a_served_batch_request_yields_a_record_per_row_with_its_own_input_and_probabilities(
        tmp_path: Path) -> None:
    """Through a real server: a 3-row request with raw inputs, a 1-row request with typed contents
    and a common 1-row request become 5 stored samples, each with its own input row and the
    probabilities the client received."""
    trainer = await start_trainer(tmp_path)
    repo = tmp_path / "models"
    write_version(repo, "mlp", 1)
    server = InferenceServer(make_settings(repo, trainer_address=f"127.0.0.1:{trainer.grpc_port}"), CollectorRegistry())
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    x = np.random.default_rng(2).random((5, 64), dtype=np.float32)
    try:
        sent = {}
        for request_id, rows, typed in (("multi", x[:3], False), ("typed", x[3:4], True), ("one", x[4:], False)):
            request = inference_pb2.ModelInferRequest(model_name="mlp", id=request_id)
            tensor = request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
            if typed:
                tensor.contents.fp32_contents.extend(rows.ravel().tolist())
            else:
                request.raw_input_contents.append(rows.tobytes())
            response = await stub.ModelInfer(request)
            probs = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(len(rows), -1) if not typed \
                else np.array(response.outputs[0].contents.fp32_contents, np.float32).reshape(1, -1)
            for r in range(len(rows)):
                sent[request_id if len(rows) == 1 else f"{request_id}#{r}"] = (rows[r], probs[r])
        await eventually(lambda: trainer.store.counts()["unlabeled"] == 5, what="5 records stored")
        stored = trainer.store.samples_by_id(trainer.store.unlabeled_arrays()[0].tolist())
    finally:
        await channel.close()
        await server.stop()
        await trainer.stop(0.5)
    assert {s.request_id for s in stored} == set(sent) == {"multi#0", "multi#1", "multi#2", "typed", "one"}
    for sample in stored:
        row, probs = sent[sample.request_id]
        (tensor,) = sample.inputs
        assert list(tensor.shape) == [1, 64] and tensor.data == row.tobytes(), sample.request_id
        np.testing.assert_allclose(sample.probabilities, probs, rtol=1e-6)
        assert sample.predicted_class == int(np.argmax(probs)) and sample.model_version == "1"


async def test_sampling_and_model_filter(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    capture = Capture(f"127.0.0.1:{free_port()}", registry=registry, sampling=0.25, models=["wanted"],
                      rng=random.Random(7))
    rng = np.random.default_rng(0)
    for i in range(400):
        _offer(capture, f"a{i}", rng, model="wanted")
        _offer(capture, f"b{i}", rng, model="ignored")
    captured = _value(registry, "pseudoserve_capture_records_total", model="wanted")
    assert 60 <= captured <= 140  # 25 % of 400, a fixed seed
    assert _value(registry, "pseudoserve_capture_records_total", model="ignored") == 0
    assert capture.depth() == captured


async def test_queue_overflow_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    port = free_port()  # nothing listens here: the trainer is down
    capture = Capture(f"127.0.0.1:{port}", registry=registry, queue_size=10, batch_size=4, flush_interval=0.01,
                      backoff_initial=0.01, backoff_max=0.05)
    await capture.start()
    rng = np.random.default_rng(0)
    for i in range(25):
        _offer(capture, f"r{i}", rng)
        await asyncio.sleep(0.005)
    assert capture.depth() == 10
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="queue_full") == 15
    assert _value(registry, "pseudoserve_capture_queue_depth") == 10
    # the trainer comes up: what was kept is delivered; the newest records survived the overflow
    trainer = await start_trainer(tmp_path, grpc_port=port)
    try:
        await eventually(lambda: capture.depth() == 0, what="queue drained")
        ids = {s.request_id for s in trainer.store.samples_by_id(trainer.store.unlabeled_arrays()[0].tolist())}
        assert len(ids) == 10 and {f"r{i}" for i in range(21, 25)} <= ids
        assert _value(registry, "pseudoserve_capture_reconnects_total") >= 1
    finally:
        await capture.stop(5)
        await trainer.stop(0.5)


def test_overflow_with_multi_row_requests_drops_whole_requests_and_keeps_the_bound() -> None:
    """Requests of several rows overflowing by less than a request: the oldest whole request goes
    (its every record counted), and the bound holds request after request."""
    registry = CollectorRegistry()
    capture = Capture(f"127.0.0.1:{free_port()}", registry=registry, queue_size=7, batch_size=4)
    rng = np.random.default_rng(5)
    for i in range(12):
        _offer(capture, f"r{i}", rng, rows=3)
        assert capture.depth() <= 7
    assert capture.depth() == 6 and [item[1] for item in capture._pending] == ["r10", "r11"]
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="queue_full") == 30
    assert _value(registry, "pseudoserve_capture_records_total", model="classifier") == 36
    assert not capture._warned  # no offer failed


async def test_trainer_down_at_start_then_up_delivers_everything(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    port = free_port()
    capture = Capture(f"127.0.0.1:{port}", registry=registry, batch_size=8, flush_interval=0.01,
                      backoff_initial=0.01, backoff_max=0.1)
    await capture.start()
    rng = np.random.default_rng(0)
    for i in range(30):
        _offer(capture, f"r{i}", rng)
    await eventually(lambda: _value(registry, "pseudoserve_capture_reconnects_total") >= 2, what="reconnect attempts")
    trainer = await start_trainer(tmp_path, grpc_port=port)
    try:
        await eventually(lambda: trainer.store.counts()["unlabeled"] == 30, what="30 records stored")
        await eventually(lambda: capture.depth() == 0, what="all acknowledged")
    finally:
        await capture.stop(5)
        await trainer.stop(0.5)
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="queue_full") == 0


async def test_a_refused_token_is_reported_with_its_status_and_the_right_token_delivers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A trainer that requires a bearer token: a service with the wrong one keeps its records and
    logs every refusal as UNAUTHENTICATED with the trainer's reason, never as a failed write
    (grpc.aio's INTERNAL for a write racing an early status, grpc/grpc#36066); the right token
    delivers."""
    caplog.set_level(logging.DEBUG, logger="service.capture")
    trainer = await start_trainer(tmp_path, auth_token="s3cret")
    rng = np.random.default_rng(0)
    address = f"127.0.0.1:{trainer.grpc_port}"
    try:
        registry = CollectorRegistry()
        wrong = Capture(address, registry=registry, token="wrong", batch_size=4, flush_interval=0.01,
                        backoff_initial=0.001, backoff_max=0.005)
        await wrong.start()
        try:
            for i in range(8):
                _offer(wrong, f"w{i}", rng)
            await eventually(lambda: _value(registry, "pseudoserve_capture_reconnects_total") >= 30,
                             what="30 refused streams")
        finally:
            await wrong.stop(0.1)
        broken = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
        assert len(broken) >= 30
        assert all("UNAUTHENTICATED" in m and "invalid bearer token" in m for m in broken), broken
        assert trainer.store.counts()["unlabeled"] == 0
        assert _value(registry, "pseudoserve_capture_acknowledged_total") == 0

        right = Capture(address, registry=CollectorRegistry(), token="s3cret", batch_size=4, flush_interval=0.01)
        await right.start()
        try:
            for i in range(8):
                _offer(right, f"r{i}", rng)
            await eventually(lambda: trainer.store.counts()["unlabeled"] == 8, what="8 records stored")
        finally:
            await right.stop(5)
    finally:
        await trainer.stop(0.5)


class _SilentCollector(collector_pb2_grpc.CollectorServicer):
    """A collector that, like trainers before the handshake, answers nothing until a batch comes."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def Stream(self, request_iterator, context):
        async for capture_batch in request_iterator:
            n = sum(len(g.request_ids) for g in capture_batch.groups)
            self.received.extend(rid for g in capture_batch.groups for rid in g.request_ids)
            yield collector_pb2.CaptureAck(batch_id=capture_batch.batch_id, stored=n)


async def test_a_trainer_without_the_early_metadata_is_written_to_after_the_handshake_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture_module, "HANDSHAKE_TIMEOUT_S", 0.2)
    server = grpc.aio.server()
    collector = _SilentCollector()
    collector_pb2_grpc.add_CollectorServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    registry = CollectorRegistry()
    capture = Capture(f"127.0.0.1:{port}", registry=registry, batch_size=4, flush_interval=0.01)
    await capture.start()
    try:
        rng = np.random.default_rng(0)
        for i in range(10):
            _offer(capture, f"s{i}", rng)
        await eventually(lambda: _value(registry, "pseudoserve_capture_acknowledged_total") == 10,
                         what="all acknowledged")
    finally:
        await capture.stop(5)
        await server.stop(0.5)
    assert sorted(collector.received) == sorted(f"s{i}" for i in range(10))
    assert _value(registry, "pseudoserve_capture_reconnects_total") == 0


async def test_oversized_records_are_sent_without_inputs(tmp_path: Path) -> None:
    trainer = await start_trainer(tmp_path)
    registry = CollectorRegistry()
    capture = Capture(f"127.0.0.1:{trainer.grpc_port}", registry=registry, max_record_bytes=100, flush_interval=0.01)
    await capture.start()
    rng = np.random.default_rng(0)
    try:
        _offer(capture, "small", rng, features=4)
        _offer(capture, "big", rng, features=64)
        await eventually(lambda: trainer.store.counts()["unlabeled"] == 2)
    finally:
        await capture.stop(5)
        await trainer.stop(0.5)
    con = sqlite3.connect(tmp_path / "store.db")
    rows = dict(con.execute("SELECT request_id, truncated FROM samples"))
    assert rows == {"small": 0, "big": 1}
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="too_large") == 1


async def test_stop_with_the_trainer_down_gives_up_in_time_and_counts_the_loss() -> None:
    registry = CollectorRegistry()
    capture = Capture(f"127.0.0.1:{free_port()}", registry=registry, backoff_initial=0.01)
    await capture.start()
    _offer(capture, "lost", np.random.default_rng(0))
    await capture.stop(0.3)
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="shutdown") == 1
    capture.offer("after", "m", "1", [], None)  # after stop: ignored, never raises
    assert capture.depth() == 0


async def test_records_being_converted_stay_counted_until_they_are_a_batch() -> None:
    """The conversion yields to the event loop between chunks: meanwhile the records it took count
    in the queue depth and the bound (an overflow drops the oldest request still queued), and so
    do converted records waiting for a free slot in the window; a stop counts them all as lost."""
    registry = CollectorRegistry()
    requests = 3 * CONVERT_CHUNK + 5  # four chunks
    n = 2 * requests
    capture = Capture(f"127.0.0.1:{free_port()}", registry=registry, batch_size=n, queue_size=n + 1)
    rng = np.random.default_rng(0)
    for i in range(requests):
        _offer(capture, f"r{i}", rng, rows=2)
    converting = asyncio.ensure_future(capture._take_batch())
    await asyncio.sleep(0)  # the conversion has run its first chunk and yielded
    assert not converting.done()
    assert capture._building_records == 2 * CONVERT_CHUNK and capture.depth() == n and not capture._drained()
    _offer(capture, "one more", rng)
    _offer(capture, "over the bound", rng)  # n + 2 > n + 1: the oldest request still queued goes, whole
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="queue_full") == 2
    batch = await converting
    ids = [request_id for group in batch.groups for request_id in group.request_ids]
    assert len(ids) == n and f"r{CONVERT_CHUNK}#0" not in ids and "over the bound" in ids
    assert capture.depth() == n
    _offer(capture, "after", rng)
    assert await capture._take_batch() is None  # the window (one batch here) is full: converted, held
    assert capture._building_records == 1 and capture.depth() == n + 1
    await capture.stop(0.01)  # nothing is listening: everything still held is counted
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="shutdown") == n + 1
    assert capture.depth() == 0


def _start_trainer_process(store: Path, port: int, workdir: Path, *extra: str) -> subprocess.Popen:
    ready = workdir / f"trainer-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "pseudoserve", "trainer", "--store", str(store), "--grpc-port", str(port),
           "--metrics-port", "0", "--no-self-training", "--ready-file", str(ready), "--model-repository",
           str(workdir / "repo"), "--log-level", "WARNING", *extra]
    with open(workdir / "trainer.log", "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"trainer did not start: {(workdir / 'trainer.log').read_text()[-2000:]}")
        time.sleep(0.05)
    assert json.loads(ready.read_text())["grpc_port"] == port
    return proc


@pytest.mark.slow
async def test_trainer_sigkilled_mid_stream_loses_no_acknowledged_record_and_stores_none_twice(tmp_path: Path) -> None:
    store, port = tmp_path / "store.db", free_port()
    registry = CollectorRegistry()
    capture = Capture(f"127.0.0.1:{port}", registry=registry, batch_size=20, flush_interval=0.005,
                      backoff_initial=0.02, backoff_max=0.2, queue_size=100_000)
    proc = _start_trainer_process(store, port, tmp_path)
    await capture.start()
    rng = np.random.default_rng(0)
    offered = []
    try:
        async def produce(start: int, stop: int) -> None:
            for i in range(start, stop):
                _offer(capture, f"k{i}", rng)
                offered.append(f"k{i}")
                if i % 20 == 0:
                    await asyncio.sleep(0.002)

        await produce(0, 600)
        await eventually(lambda: _value(registry, "pseudoserve_capture_acknowledged_total") >= 200)
        producing = asyncio.create_task(produce(600, 1200))  # traffic keeps coming while we kill
        await asyncio.sleep(0.01)
        acked_before = _value(registry, "pseudoserve_capture_acknowledged_total")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        con = sqlite3.connect(store)
        assert con.execute("SELECT COUNT(*) FROM samples").fetchone()[0] >= acked_before
        con.close()
        await producing
        proc = _start_trainer_process(store, port, tmp_path)
        await eventually(lambda: capture.depth() == 0, timeout=60, what="everything acknowledged after restart")
    finally:
        await capture.stop(5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    con = sqlite3.connect(store)
    ids = [r[0] for r in con.execute("SELECT request_id FROM samples")]
    assert len(ids) == len(set(ids)) == len(offered) == 1200
    assert set(ids) == set(offered)
    assert _value(registry, "pseudoserve_capture_reconnects_total") >= 1
    assert _value(registry, "pseudoserve_capture_dropped_total", reason="queue_full") == 0


def _thread_scheduling(pid: int) -> dict[int, tuple[int, int]]:
    """(niceness, policy) of every thread of a process (/proc/PID/task/TID/stat, fields 19 and 41)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()  # fields[0] is field 3
        out[int(task.name)] = (int(fields[16]), int(fields[38]))
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread scheduling from /proc")
@pytest.mark.parametrize(("extra", "expected", "policy"), [
    ((), 10, os.SCHED_IDLE),
    (("--nice", "15", "--cpu-policy", "nice"), 15, os.SCHED_OTHER),
    (("--nice", "0", "--cpu-policy", "nice"), None, os.SCHED_OTHER),
])
def test_trainer_process_yields_the_cpu_to_serving_on_shared_cores(tmp_path: Path, extra, expected, policy) -> None:
    """Every thread of a running trainer (gRPC, store writer, BLAS pools started at import) runs at
    the configured niceness, under SCHED_IDLE by default; --nice 0 leaves the niceness as started."""
    started_at = os.getpriority(os.PRIO_PROCESS, 0)
    proc = _start_trainer_process(tmp_path / "store.db", free_port(), tmp_path, *extra)
    try:
        scheduling = _thread_scheduling(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert len(scheduling) > 1  # the check covers more than the main thread
    want = max(started_at, expected) if expected is not None else started_at
    assert set(scheduling.values()) == {(want, policy)}


def test_trainer_refuses_a_niceness_out_of_range(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pseudoserve", "trainer", "--store", str(tmp_path / "s.db"),
                             "--nice", "20"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "nice" in result.stderr and "19" in result.stderr
    assert not (tmp_path / "s.db").exists()


def test_trainer_refuses_an_unknown_cpu_policy_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "PSEUDOSERVE_TRAINER_CPU_POLICY": "fast"}
    result = subprocess.run([sys.executable, "-m", "pseudoserve", "trainer", "--store", str(tmp_path / "s.db")],
                            check=False, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert "cpu_policy" in result.stderr and "'idle' or 'nice'" in result.stderr, result.stderr
    assert not (tmp_path / "s.db").exists()
