"""DynamicBatcher with a real onnxruntime-free run function that records the calls it receives:
merging, splitting, max_batch_size, delay 0 vs delay > 0, and errors reaching only their request."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batcher import DynamicBatcher


class Recorder:
    """run(index, feeds) -> [x * 2, row sums]; blocks while `gate` is clear; fails on negative input."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, index: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.gate.wait(timeout=30)
        x = feeds["x"]
        self.calls.append(x.shape[0])
        if (x < 0).any():
            raise ValueError("negative input")
        return [x * 2, x.sum(axis=1)]


@pytest.fixture
def executor():
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _batcher(run, executor, **kw) -> DynamicBatcher:
    options = {"instances": 1, "max_batch_size": 8, "max_queue_delay_s": 0.0, "executor": executor}
    options.update(kw)
    return DynamicBatcher(run, **options)


def _rows(value: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3), value, dtype=np.float32)}


async def _submit_while_busy(batcher: DynamicBatcher, run: Recorder, feeds: list[dict[str, np.ndarray]]):
    """Occupy the only instance, queue `feeds`, then release: the queued ones run together."""
    run.gate.clear()
    first = asyncio.ensure_future(batcher.submit(_rows(100.0), 1))
    await asyncio.sleep(0.05)  # the first call is now blocked inside the executor
    rest = [asyncio.ensure_future(batcher.submit(f, f["x"].shape[0])) for f in feeds]
    await asyncio.sleep(0)
    assert batcher.queued == len(feeds)
    run.gate.set()
    return await first, await asyncio.gather(*rest, return_exceptions=True)


async def test_lone_request_runs_at_once_and_unsplit(executor) -> None:
    run = Recorder()
    batcher = _batcher(run, executor, max_queue_delay_s=10.0)  # a lone request never waits the delay
    outputs, queue_s = await asyncio.wait_for(batcher.submit(_rows(1.0, 2), 2), timeout=5)
    assert run.calls == [2] and queue_s == 0.0
    np.testing.assert_array_equal(outputs[0], np.full((2, 3), 2.0))


async def test_queued_requests_merge_and_split_back(executor) -> None:
    run = Recorder()
    batcher = _batcher(run, executor)
    feeds = [_rows(float(i), n) for i, n in ((1, 1), (2, 2), (3, 1))]
    _, results = await _submit_while_busy(batcher, run, feeds)
    assert run.calls == [1, 4]  # the blocking call, then one merged call of 1 + 2 + 1 rows
    for feed, (outputs, queue_s) in zip(feeds, results):
        np.testing.assert_array_equal(outputs[0], feed["x"] * 2)
        np.testing.assert_array_equal(outputs[1], feed["x"].sum(axis=1))
        assert queue_s > 0


async def test_batches_respect_max_batch_size(executor) -> None:
    run = Recorder()
    batcher = _batcher(run, executor, max_batch_size=4)
    feeds = [_rows(float(i), 3) for i in range(3)]
    _, results = await _submit_while_busy(batcher, run, feeds)
    assert run.calls[0] == 1 and all(c <= 4 for c in run.calls) and sum(run.calls[1:]) == 9
    assert all(not isinstance(r, BaseException) for r in results)


async def test_different_shapes_do_not_merge(executor) -> None:
    run = Recorder()
    batcher = _batcher(run, executor)
    feeds = [_rows(1.0), {"x": np.ones((1, 5), np.float32)}, _rows(2.0)]
    _, results = await _submit_while_busy(batcher, run, feeds)
    assert sorted(run.calls[1:]) == [1, 2]
    assert results[1][0][0].shape == (1, 5)


async def test_error_reaches_only_its_request(executor) -> None:
    run = Recorder()
    batcher = _batcher(run, executor)
    feeds = [_rows(1.0), _rows(-1.0), _rows(3.0)]
    _, results = await _submit_while_busy(batcher, run, feeds)
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[0][0][0], feeds[0]["x"] * 2)
    np.testing.assert_array_equal(results[2][0][0], feeds[2]["x"] * 2)


async def test_delay_waits_for_more_requests_when_busy(executor) -> None:
    run = Recorder()
    batcher = _batcher(run, executor, max_queue_delay_s=0.5, instances=1)
    run.gate.clear()
    first = asyncio.ensure_future(batcher.submit(_rows(0.0), 1))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(batcher.submit(_rows(1.0), 1))
    await asyncio.sleep(0)
    run.gate.set()
    await first
    third = asyncio.ensure_future(batcher.submit(_rows(2.0), 1))  # arrives while `second` waits
    await asyncio.gather(second, third)
    assert run.calls == [1, 2]


async def test_no_batching_model_runs_requests_alone(executor) -> None:
    run = Recorder()
    batcher = _batcher(run, executor, max_batch_size=0)
    _, results = await _submit_while_busy(batcher, run, [_rows(1.0), _rows(2.0)])
    assert run.calls == [1, 1, 1]
    np.testing.assert_array_equal(results[1][0][0], _rows(2.0)["x"] * 2)


async def test_inline_calls_for_cheap_models(executor) -> None:
    threads = []

    def run(index, feeds):
        threads.append(threading.get_ident())
        return [feeds["x"]]

    cheap = _batcher(run, executor, inline_max_s=1e-3, estimate_s=lambda rows: 1e-5 * rows)
    costly = _batcher(run, executor, inline_max_s=1e-3, estimate_s=lambda rows: 1.0)
    await cheap.submit(_rows(1.0), 1)
    await costly.submit(_rows(1.0), 1)
    assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident()
