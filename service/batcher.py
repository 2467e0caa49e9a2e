"""Dynamic batching of concurrent requests to one model version.

`DynamicBatcher.submit(feeds, rows)` returns that request's rows of every output. Requests whose
non-batch shapes and dtypes agree are merged into one onnxruntime call of at most
`max_batch_size` rows, the outputs split back by row counts.

Scheduling, per free session instance:
- a lone request (nothing queued, an instance free) runs at once: it never pays a delay;
- while every instance is busy, requests queue; when one frees up it takes what is queued. With
  `max_queue_delay_s` > 0 it waits until the oldest queued request is that old (or the batch is
  full) before running; with 0 it never waits.
- If a merged call fails, each of its requests is run alone, so an error reaches only the
  request that caused it.

Where the call runs: in the bounded executor, off the event loop, unless its expected compute time
(measured at warm-up, `estimate_s(rows)`) is below `inline_max_s`. For tiny models (the ~10 µs
MLP) a thread hop costs several times the compute itself, so running inline is both faster and
lighter on a 2-core machine; big models always go to the executor (STYLE.md principle 4).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

RunFn = Callable[[int, dict[str, np.ndarray]], list[np.ndarray]]
BatchHook = Callable[[list[np.ndarray], int, float], None]


class _Pending:
    __slots__ = ("enqueued", "feeds", "future", "key", "rows")

    def __init__(self, feeds: dict[str, np.ndarray], rows: int, key: tuple, future: asyncio.Future) -> None:
        self.feeds = feeds
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued = time.perf_counter()


class DynamicBatcher:
    """Merges concurrent requests into onnxruntime calls over `instances` sessions."""

    def __init__(self, run: RunFn, *, instances: int, max_batch_size: int, max_queue_delay_s: float,
                 executor: Executor, inline_max_s: float = 0.0,
                 estimate_s: Callable[[int], float] | None = None, on_batch: BatchHook | None = None) -> None:
        self._run_fn = run
        self._free = list(range(instances))
        self._max_rows = max_batch_size
        self._delay = max_queue_delay_s
        self._executor = executor
        # calls of up to this many rows run inline (0: never); decided once from the estimate
        self._inline_rows = 0
        if inline_max_s > 0 and estimate_s is not None:
            limit = max(max_batch_size, 1)
            while self._inline_rows < limit and estimate_s(self._inline_rows + 1) <= inline_max_s:
                self._inline_rows += 1
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, feeds: dict[str, np.ndarray], rows: int) -> tuple[list[np.ndarray], float]:
        """Outputs (in the session's output order) for this request's rows, and its queue time."""
        if self._free and not self._queue:
            index = self._free.pop()
            try:
                outputs = await self._call(index, feeds, rows)
            finally:
                self._free.append(index)
                if self._queue:
                    self._schedule()
            return outputs, 0.0
        loop = asyncio.get_running_loop()
        item = _Pending(feeds, rows, _merge_key(feeds, self._max_rows), loop.create_future())
        self._queue.append(item)
        self._schedule()
        return await item.future

    @property
    def queued(self) -> int:
        """Requests waiting for an instance."""
        return len(self._queue)

    def _schedule(self) -> None:
        while self._free and self._queue:
            if self._delay > 0:
                wait = self._queue[0].enqueued + self._delay - time.perf_counter()
                if wait > 0 and sum(p.rows for p in self._queue) < self._max_rows:
                    if self._timer is None:
                        self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)
                    return
            batch = self._take()
            if not batch:
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(self._free.pop(), batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _take(self) -> list[_Pending]:
        """The head request plus queued requests that can merge with it, up to max_batch_size rows."""
        head = self._queue.popleft()
        if head.future.done():  # cancelled by its client while queued
            return []
        batch, rows = [head], head.rows
        if head.key is None:
            return batch
        kept: deque[_Pending] = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():
                continue
            if item.key == head.key and rows + item.rows <= self._max_rows:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
                if rows >= self._max_rows:
                    break
        kept.extend(self._queue)
        self._queue = kept
        return batch

    async def _run_batch(self, index: int, batch: list[_Pending]) -> None:
        try:
            started = time.perf_counter()
            if len(batch) == 1:
                item = batch[0]
                try:
                    outputs = await self._call(index, item.feeds, item.rows)
                except Exception as exc:  # noqa: BLE001 - delivered to the request that caused it
                    _deliver_error(item, exc)
                else:
                    _deliver(item, (outputs, started - item.enqueued))
                return
            total = sum(p.rows for p in batch)
            feeds = {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}
            try:
                outputs = await self._call(index, feeds, total)
                if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
                    raise ValueError("an output does not have the batch dimension first")
            except Exception:  # noqa: BLE001 - isolate the failing request by running each alone
                for item in batch:
                    try:
                        single = await self._call(index, item.feeds, item.rows)
                    except Exception as exc:  # noqa: BLE001
                        _deliver_error(item, exc)
                    else:
                        _deliver(item, (single, started - item.enqueued))
                return
            offset = 0
            for item in batch:
                end = offset + item.rows
                _deliver(item, ([o[offset:end] for o in outputs], started - item.enqueued))
                offset = end
        finally:
            self._free.append(index)
            self._schedule()

    async def _call(self, index: int, feeds: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        if rows <= self._inline_rows:
            start = time.perf_counter()
            outputs = self._run_fn(index, feeds)
            compute = time.perf_counter() - start
        else:
            outputs, compute = await asyncio.get_running_loop().run_in_executor(
                self._executor, _timed, self._run_fn, index, feeds)
        if self._on_batch is not None:
            self._on_batch(outputs, rows, compute)
        return outputs


def _timed(run: RunFn, index: int, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
    start = time.perf_counter()
    outputs = run(index, feeds)
    return outputs, time.perf_counter() - start


def _merge_key(feeds: dict[str, np.ndarray], max_rows: int) -> tuple | None:
    """Requests merge only with the same inputs, dtypes and non-batch shapes (None: never)."""
    if max_rows <= 0:
        return None
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items())


def _deliver(item: _Pending, result) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _deliver_error(item: _Pending, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
