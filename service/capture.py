"""Capture of served traffic for the trainer sidecar: a bounded in-memory queue filled by the data
plane after each successful inference, drained by one background task that streams CaptureBatches
(columnar CaptureGroups, see protos/collector.proto) to the trainer's
`pseudoserve.v1.Collector/Stream` and forgets a batch only when the trainer acknowledged it (the
trainer acks after commit).

Who calls it: the service's server start-up builds `Capture.from_settings(settings, registry)`
(None when no trainer address is set or sampling is 0), awaits `start()` and, on shutdown,
`stop(timeout)`; the DataPlane calls `offer_served(...)` after every successful request (other
callers, `offer(...)`).

Guarantees and choices:
- `offer` is O(1) and never blocks or raises: sampling, the per-model filter, then one tuple is
  appended to the queue (`queue_item`); its counters are plain ints read at scrape time. For the
  common request (one sample, one input given as bytes, one float32 probability row) the tuple
  holds only that input's bytes, a copy of the probability row and an interned key (model, version,
  classes, input name, datatype, shape). `offer_served` is given the model version that served
  and validated the request: when that version's one-sample requests can only be common requests
  of one key (`version_key`: one required input of a fixed shape, a float32 probability output of
  a fixed class count), it checks only the request's raw bytes and its probabilities' type and
  shape and reuses the version's interned key: 88 bytecodes per request, against 143 when `offer`
  compared every part of a request with the last one's (docs/benchmarks.md section 2, session 16).
  So every other object of the request (its InferInputs, the decoded array, onnxruntime's output) is
  freed when the request ends, while it is still in the cache (held until the sender's next burst,
  they made onnxruntime's call 2-4 µs slower: docs/benchmarks.md, section 2, session 13). Any other
  request is queued as references to what the data plane holds (its InferInputs and the probability
  output, which the model version knows: `ModelVersion.prob_index`). Nothing is grouped or
  converted on the request path: in a live server every step there runs with cold caches and costs
  about three times its hot-loop figure, so all of that happens in the sender, a batch at a time.
  `offer`, the sender and `stop` all run on one event loop (the data plane's), so the queue takes
  no lock (a lock per request cost 0.5 µs); `depth()`, read by the metrics thread, only adds plain
  ints. Conversion happens in the background task on the same event loop: every `CONVERT_INTERVAL`
  (0.2 s; a thread sets an event on the loop each tick, because any timer pending on the serving
  loop costs asyncio's `_run_once` about 17 bytecodes on every turn, some 68 per served request:
  docs/benchmarks.md section 2, session 16) it takes what was queued in one burst,
  `CONVERT_CHUNK` requests at a time with a turn of the loop in between, so requests never wait
  behind a whole burst. A chunk made only of the common
  request with one key, as steady traffic to one model is, joins its group in one step of C-level
  passes (`_collect_uniform`, which compares the keys by identity); any other chunk goes request by
  request. Each chunk is compacted at once (inputs' bytes joined, probabilities stacked), so
  nothing of a served request is held after its burst. The groups being built become one
  CaptureBatch when they hold `batch_size` records (1,024) or the oldest of them is
  `flush_interval` (1 s) old: the trainer's cost is partly per batch (a transaction, an fsync, an
  acknowledgement), and bursts keep the serving loop's caches warm (a conversion every 20 ms cost
  the serving process more; docs/benchmarks.md section 2, session 11). Each group becomes one
  CaptureGroup with numpy-computed columns (probabilities, predicted class, confidence, margin) and
  the inputs' bytes joined per input, never a message per sample.
- The bound (`queue_size` records) covers queued records, those being built into a batch *and*
  sent-but-unacknowledged ones.
  When it is exceeded the oldest queued (not yet converted) requests are dropped whole, their records
  counted as `pseudoserve_capture_dropped_total{reason="queue_full"}`; unacknowledged batches are kept for
  resending (at most `max_in_flight` batches are in flight), so memory stays bounded however long
  the trainer is down, slow or restarting, and clients never notice.
- A record whose inputs exceed `max_record_bytes` is still sent with its prediction metadata but
  without inputs (its index is in the group's `truncated`), counted as
  `dropped_total{reason="too_large"}` (its inputs were dropped). Records never acknowledged before
  `stop` gives up are counted `shutdown`.
- Reconnects use exponential backoff with full jitter (`uniform(0, min(max, initial * 2**n))`),
  reset after the first acknowledgement of a stream; unacknowledged batches are resent first,
  with their original batch ids; the trainer deduplicates by request id.
- A request of N rows (its batch size; 1 for a model without batching) yields N records with ids
  "<id>" (N == 1) or "<id>#<row>", each with its own rows of every input (shape [1, ...]).
  Probabilities come from the output the data plane passes (named `probabilities`, else the first
  2-D floating output), softmaxed if its rows are not already distributions; a model without one
  (or whose one is not (classes,) or (rows, classes) with a row per record) yields records with
  empty probabilities and class -1.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import random
import socket
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

from protos import collector_pb2, collector_pb2_grpc
from service.domain import InferInput
from service.tensors import encode_raw

if TYPE_CHECKING:
    from service.model import ModelVersion

log = logging.getLogger(__name__)

CONVERT_CHUNK = 32  # queued requests converted between two turns of the event loop
CONVERT_INTERVAL = 0.2  # seconds between two bursts of conversion of what was queued (at most)
HANDSHAKE_TIMEOUT_S = 5.0  # how long a new stream waits for the trainer's initial metadata
MAX_KEYS = 256  # interned keys of common requests kept (cleared beyond: equal keys still group alike)
_time_ns = time.time_ns
# queued per request, see `queue_item`: (timestamp ns, request id, key, data, probabilities, rows)
_Queued = tuple[int, str, tuple | None, Any, Any, int]
_F32 = np.dtype(np.float32)
_FLOAT32 = {_F32}
_dtype_of = operator.attrgetter("dtype")
_rows_of = operator.itemgetter(5)
_BYTES = {bytes}


class _CapturedCollector:
    """`pseudoserve_capture_records_total{model}` read at scrape time from plain per-model ints
    (each in a one-item list) that `offer` increments (a prometheus_client Counter takes a lock per
    increment)."""

    def __init__(self, counts: dict[str, list[int]]) -> None:
        self._counts = counts

    def collect(self):
        family = CounterMetricFamily("pseudoserve_capture_records", "Records captured for the trainer",
                                     labels=["model"])
        for model, count in list(self._counts.items()):
            family.add_metric([model], count[0])
        yield family


class CaptureMetrics:
    """The capture families of docs/architecture.md, on the service's registry. The two the hot
    path feeds (records captured, queue depth) are read at scrape time from plain values."""

    def __init__(self, registry: CollectorRegistry, captured: dict[str, list[int]],
                 depth: Callable[[], int]) -> None:
        registry.register(_CapturedCollector(captured))
        self.sent = Counter("pseudoserve_capture_sent", "Records sent to the trainer (resends included)",
                            registry=registry)
        self.acknowledged = Counter("pseudoserve_capture_acknowledged", "Records the trainer acknowledged as stored",
                                    registry=registry)
        self.dropped = Counter("pseudoserve_capture_dropped", "Records (or their inputs) dropped, by reason",
                               ["reason"], registry=registry)
        self.queue_depth = Gauge("pseudoserve_capture_queue_depth", "Records queued or awaiting acknowledgement",
                                 registry=registry)
        self.queue_depth.set_function(depth)
        self.reconnects = Counter("pseudoserve_capture_reconnects", "Capture streams re-established after a failure",
                                  registry=registry)
        for reason in ("queue_full", "too_large", "shutdown"):
            self.dropped.labels(reason=reason)


def queue_item(timestamp_ns: int, request_id: str, model_name: str, model_version: str, inputs: Sequence[InferInput],
               probabilities: np.ndarray | None, rows: int, keys: dict[tuple, tuple] | None = None) -> _Queued:
    """What `Capture.offer` queues for one served request.

    The common request (one sample, one input given as bytes, a (1, classes) float32 probability
    array) becomes (timestamp, id, key, the input's bytes, the probability row's bytes, 1), with
    key = (model, version, classes, input name, datatype, shape), the key of its CaptureGroup;
    given `keys`, equal keys are one object (interned), so the sender compares them by identity
    and nothing else of the request is kept. Any other request becomes (timestamp, id, None,
    (model, version, inputs), probabilities, rows): references, looked at by the sender."""
    if rows == 1 and len(inputs) == 1 and probabilities.__class__ is np.ndarray:
        tensor = inputs[0]
        raw, shape = tensor.raw, probabilities.shape
        if (raw is not None and len(shape) == 2 and shape[0] == 1 and shape[1] and probabilities.dtype is _F32
                and tensor.datatype != "BYTES" and tensor.shape.__class__ is tuple):
            key = (model_name, model_version, shape[1], tensor.name, tensor.datatype, tensor.shape)
            if keys is not None:
                key = keys.setdefault(key, key)
            return timestamp_ns, request_id, key, raw, probabilities.tobytes(), 1
    return timestamp_ns, request_id, None, (model_name, model_version, inputs), probabilities, rows


def version_key(source: ModelVersion, keys: dict[tuple, tuple]) -> tuple[tuple | None, tuple[int, int] | None]:
    """(key, probabilities' shape) that every one-sample request model version `source` accepts
    (`ModelVersion.validate`) has as a common request (`queue_item`), given a (1, classes) float32
    probability row; (None, None) when its requests may differ. That holds when the version takes
    exactly one input, required and not BYTES, whose shape is fixed apart from the batch dimension,
    and its probability output is float32 with a fixed class count: validation then leaves the
    request one input of the version's name, datatype and shape. The key is interned in `keys`."""
    if source.prob_index is None or len(source.inputs) != 1 or source.optional_inputs:
        return None, None
    (spec,) = source.inputs.values()
    output = source.outputs[source.prob_index]
    shape = (1, *spec.shape[1:]) if source.options.max_batch_size > 0 else spec.shape
    if (spec.datatype == "BYTES" or min(shape, default=0) < 0 or output.datatype != "FP32"
            or len(output.shape) != 2 or output.shape[0] not in (-1, 1) or output.shape[1] < 1):
        return None, None
    key = (source.name, source.version_str, output.shape[1], spec.name, spec.datatype, shape)
    return keys.setdefault(key, key), (1, output.shape[1])


def _group_for(key: tuple, groups: dict[tuple, _Group]) -> _Group:
    """The group being built for a common request's key (see `queue_item`)."""
    group = groups.get(key)
    if group is None:
        model_name, model_version, classes, name, datatype, shape = key
        group = groups[key] = _Group(model_name, model_version, ((name, datatype, shape),), classes)
    return group


def as_distribution(probs: np.ndarray) -> np.ndarray:
    """(rows, classes) float32 or float64 probabilities (other types as float64); softmax, in
    float64, of the rows that are not distributions (checked in the array's own precision)."""
    p = np.asarray(probs)
    if p.dtype != np.float32 and p.dtype != np.float64:
        p = p.astype(np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if p.size == 0:
        return p
    ok = (np.abs(p.sum(axis=1) - 1.0) < 1e-3) & (p.min(axis=1) >= 0.0)
    if not ok.all():
        bad = p[~ok].astype(np.float64)
        e = np.exp(bad - bad.max(axis=1, keepdims=True))
        p = p.copy()
        p[~ok] = e / e.sum(axis=1, keepdims=True)
    return p


def _split_bytes_elements(data: bytes, count: int) -> list[bytes]:
    """Triton BYTES encoding: split `data` into `count` length-prefixed elements (kept encoded)."""
    out, offset = [], 0
    for _ in range(count):
        (length,) = struct.unpack_from("<I", data, offset)
        out.append(data[offset:offset + 4 + length])
        offset += 4 + length
    return out


def _row_chunks(inputs: Sequence[InferInput], rows: int,
                batched: bool) -> tuple[tuple[tuple[str, str, tuple[int, ...]], ...], list[list[bytes]]]:
    """(signature: per input (name, datatype, per-sample shape), per input: the rows' bytes, as
    received or, for typed contents, encoded)."""
    signature, columns = [], []
    for tensor in inputs:
        name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        data = tensor.raw if tensor.raw is not None else encode_raw(tensor.data)
        if not batched:  # the model has no batch dimension: the request is one sample
            signature.append((name, datatype, (1, *shape)))
            columns.append([data])
        elif not shape or shape[0] != rows:  # not split along the batch: every row gets all of it
            signature.append((name, datatype, shape))
            columns.append([data] * rows)
        elif rows == 1:
            signature.append((name, datatype, shape))
            columns.append([data])
        else:
            signature.append((name, datatype, (1, *shape[1:])))
            if datatype == "BYTES":
                per_row_count = math.prod(shape[1:])
                elements = _split_bytes_elements(data, rows * per_row_count)
                columns.append([b"".join(elements[i * per_row_count:(i + 1) * per_row_count]) for i in range(rows)])
            else:
                size = len(data) // rows
                columns.append([data[i * size:(i + 1) * size] for i in range(rows)])
    return tuple(signature), columns


class _Group:
    """The samples of one CaptureGroup while a batch is being built: those just added, per sample
    (`columns`: their inputs' bytes; `probabilities`: their blocks of rows, float32 bytes of one
    row for a common request, else the (rows, classes) array the data plane held), and those
    already compacted into joined bytes and arrays (`joined`, `sizes`, `blocks`)."""

    __slots__ = (
        "blocks",
        "classes",
        "columns",
        "compacted",
        "ids",
        "joined",
        "model_name",
        "model_version",
        "probabilities",
        "signature",
        "sizes",
        "timestamps",
        "truncated",
    )

    def __init__(self, model_name: str, model_version: str, signature: tuple, classes: int) -> None:
        self.model_name, self.model_version, self.signature, self.classes = model_name, model_version, signature, classes
        self.ids: list[str] = []
        self.timestamps: list[int] = []
        self.columns: list[list[bytes]] = [[] for _ in signature]  # per input: each new sample's bytes
        self.probabilities: list[np.ndarray | bytes] = []  # the new samples' blocks of rows
        self.truncated: list[int] = []
        self.compacted = 0  # samples in joined/sizes/blocks
        self.joined: list[list[bytes]] = [[] for _ in signature]  # per input: compacted samples' bytes, joined
        self.sizes: list[list[int]] = [[] for _ in signature]  # per input: compacted samples' byte counts
        self.blocks: list[np.ndarray] = []  # compacted samples' probabilities, stacked

    def add_sample(self, request_id: str, timestamp_ns: int, data: bytes, probabilities: bytes) -> None:
        """Append one common request (see `queue_item`) whose bytes are within the cap."""
        self.ids.append(request_id)
        self.timestamps.append(timestamp_ns)
        self.columns[0].append(data)
        self.probabilities.append(probabilities)

    def add(self, request_id: str, timestamp_ns: int, rows: int, columns: list[list[bytes]],
            probabilities: np.ndarray | None, max_record_bytes: int) -> int:
        """Append a request's rows; returns how many of them were truncated (inputs dropped)."""
        first = len(self.ids)
        self.ids.extend([request_id] if rows == 1 else [f"{request_id}#{i}" for i in range(rows)])
        self.timestamps.extend([timestamp_ns] * rows)
        if probabilities is not None:
            self.probabilities.append(probabilities)
        budget = max_record_bytes - 4 * self.classes
        cut = [i for i in range(rows) if sum(len(column[i]) for column in columns) > budget]
        for i in cut:
            for column in columns:
                column[i] = b""
            self.truncated.append(first + i)
        for mine, column in zip(self.columns, columns):
            mine.extend(column)
        return len(cut)

    def compact(self) -> None:
        """Join the new samples' bytes and stack their probabilities, dropping every reference to
        the requests they came from (so their memory is reused at once, hot in the cache)."""
        new = len(self.ids) - self.compacted
        if not new:
            return
        for joined, sizes, column in zip(self.joined, self.sizes, self.columns):
            joined.append(b"".join(column))
            sizes.extend(map(len, column))
            column.clear()
        if self.classes:
            self.blocks.append(_stack_rows(self.probabilities, new, self.classes))
            self.probabilities = []
        self.compacted = len(self.ids)

    def absorb(self, other: _Group) -> None:
        """Append the samples of `other`, a compacted group of the same key."""
        offset = len(self.ids)
        self.ids += other.ids
        self.timestamps += other.timestamps
        self.truncated += [offset + i for i in other.truncated]
        for mine, theirs in zip(self.joined, other.joined):
            mine += theirs
        for mine, theirs in zip(self.sizes, other.sizes):
            mine += theirs
        self.blocks += other.blocks
        self.compacted = len(self.ids)

    def write(self, out: Any) -> None:
        """Append this group as a CaptureGroup to the repeated field `out` (all or nothing)."""
        self.compact()
        n = len(self.ids)
        stats: dict[str, Any] = {"predicted_class": [-1] * n}
        if self.classes:
            P = as_distribution(_stack_rows(self.blocks, n, self.classes))
            predicted = P.argmax(axis=1)
            top1 = P[np.arange(n), predicted]
            if self.classes > 1:  # the second highest: the top-2 of each row's partition
                top2 = np.partition(P, -2, axis=1)[:, -2]
            else:
                top2 = np.zeros_like(top1)
            stats = {"probabilities": np.ascontiguousarray(P, dtype="<f4").tobytes(),
                     "predicted_class": predicted.tolist(),
                     "confidence": top1.tolist(), "margin": (top1 - top2).tolist()}
        inputs = [collector_pb2.InputColumn(name=name, datatype=datatype, shape=shape, data=b"".join(joined),
                                            sizes=sizes)
                  for (name, datatype, shape), joined, sizes in zip(self.signature, self.joined, self.sizes)]
        out.add(model_name=self.model_name, model_version=self.model_version, classes=self.classes,
                request_ids=self.ids, timestamp_ns=self.timestamps, truncated=self.truncated, inputs=inputs, **stats)


def _stack_rows(blocks: list[np.ndarray | bytes], n: int, classes: int) -> np.ndarray:
    """The (n, classes) probabilities of a group from its blocks of rows (arrays, or float32 bytes
    of rows), always a new array: when all are bytes or float32 arrays, their bytes joined (one
    copy, no numpy call per block; a block that is not C-contiguous has no such bytes), else
    concatenated."""
    kinds = set(map(type, blocks))
    if kinds == _BYTES or set(map(_dtype_of, (b for b in blocks if b.__class__ is not bytes))) == _FLOAT32:
        try:
            return np.frombuffer(b"".join(blocks), dtype=np.float32).reshape(n, classes)
        except (BufferError, TypeError):
            pass
    if bytes in kinds:
        blocks = [np.frombuffer(b, dtype=np.float32).reshape(-1, classes) if b.__class__ is bytes else b for b in blocks]
    return np.concatenate(blocks)


def build_batch(items: Sequence[_Queued], max_record_bytes: int, out: Any = None) -> tuple[Any, int]:
    """CaptureGroups of offered requests (one per model version, input signature and class
    count), appended to `out` (a CaptureBatch's `groups`; default: a new one); returns (the
    groups, how many samples were truncated)."""
    if out is None:
        out = collector_pb2.CaptureBatch().groups
    groups: dict[tuple, _Group] = {}
    truncated = collect(items, groups, max_record_bytes)
    for group in groups.values():
        group.write(out)
    return out, truncated


def collect(items: Sequence[_Queued], groups: dict[tuple, _Group], max_record_bytes: int) -> int:
    """Add offered requests to the groups being built (keyed by model version, class count and
    input signature); returns how many samples were truncated."""
    if _collect_uniform(items, groups, max_record_bytes):
        return 0
    return _collect_each(items, groups, max_record_bytes)


def _collect_each(items: Sequence[_Queued], groups: dict[tuple, _Group], max_record_bytes: int) -> int:
    """`collect`, request by request: any mix of models, versions, signatures, batch sizes and
    probability outputs."""
    truncated = 0
    for timestamp_ns, request_id, key, data, probs, rows in items:
        if key is not None:  # a common request
            group = _group_for(key, groups)
            classes = key[2]
            if len(data) + 4 * classes <= max_record_bytes:
                group.add_sample(request_id, timestamp_ns, data, probs)
            else:
                truncated += group.add(request_id, timestamp_ns, 1, [[data]],
                                       np.frombuffer(probs, dtype=np.float32).reshape(1, classes), max_record_bytes)
            continue
        model_name, model_version, inputs = data
        if probs is not None and (probs.ndim not in (1, 2) or probs.shape[-1] == 0):
            probs = None  # not (classes,) or (rows, classes): no usable probabilities
        batched = probs is None or probs.ndim == 2  # 1-D probabilities: a model without batching
        if probs is not None and (probs.shape[0] if probs.ndim == 2 else 1) != rows:
            probs = None  # not one row per record
        classes = probs.shape[-1] if probs is not None else 0
        signature, columns = _row_chunks(inputs, rows, batched)
        key = (model_name, model_version, classes, *(part for entry in signature for part in entry))  # as queue_item
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(model_name, model_version, signature, classes)
        truncated += group.add(request_id, timestamp_ns, rows, columns,
                               probs.reshape(-1, classes) if probs is not None else None, max_record_bytes)
    return truncated


def _collect_uniform(items: Sequence[_Queued], groups: dict[tuple, _Group], max_record_bytes: int) -> bool:
    """Add `items` to their group in one step when every one is a common request with the same
    key (one model version and input signature; see `queue_item`) within the cap, as steady
    traffic to one model is; returns False, having added nothing, otherwise. Every check and copy
    is a C-level pass over the items (`zip`, `count`, which compares interned keys by identity,
    `map`), none a Python step per item."""
    if not items:
        return True
    stamps, ids, keys, datas, probs, _ = zip(*items)
    key = keys[0]
    if key is None or keys.count(key) != len(keys) or max(map(len, datas)) + 4 * key[2] > max_record_bytes:
        return False
    group = _group_for(key, groups)
    group.ids.extend(ids)
    group.timestamps.extend(stamps)
    group.columns[0].extend(datas)
    group.probabilities.extend(probs)
    return True


def samples_in(batch: collector_pb2.CaptureBatch) -> int:
    """How many samples (records) a CaptureBatch carries."""
    return sum(len(group.request_ids) for group in batch.groups)


class _StreamBroken(Exception):
    """The capture stream ended or the trainer reported an error: reconnect and resend."""


async def _ended(reader: asyncio.Task) -> None:
    """The stream ended: raise its error (a refusal, a broken connection); a clean end from the
    trainer's side is a broken stream too."""
    await reader
    raise _StreamBroken("the trainer closed the capture stream")


class Capture:
    """Bounded capture queue plus the background sender (see the module docstring)."""

    def __init__(self, address: str, *, registry: CollectorRegistry, sampling: float = 1.0,
                 models: Collection[str] = (), max_record_bytes: int = 1_048_576, queue_size: int = 10_000,
                 batch_size: int = 1024, token: str | None = None, tls_ca_file: Path | None = None,
                 flush_interval: float = 1.0, backoff_initial: float = 0.05, backoff_max: float = 5.0,
                 max_in_flight: int = 4, sender: str | None = None, rng: random.Random | None = None) -> None:
        if not 0.0 < sampling <= 1.0:
            raise ValueError(f"capture_sampling must be in (0, 1], got {sampling}")
        self.address = address
        self._sampling = sampling
        self._models = frozenset(models) or None
        self._max_record_bytes = max_record_bytes
        self._capacity = max(1, queue_size)
        self._batch_size = max(1, min(batch_size, self._capacity))
        self._max_in_flight = max(1, min(max_in_flight, self._capacity // self._batch_size))
        self._token = token
        self._tls_ca_file = tls_ca_file
        self._flush_interval = flush_interval
        self._tick = min(CONVERT_INTERVAL, flush_interval)  # the sender converts what is queued this often
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self.sender = sender or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._captured: dict[str, list[int]] = {}  # records offered per model (read at scrape time)
        self.metrics = CaptureMetrics(registry, self._captured, self.depth)
        self._pending: list[_Queued] = []  # oldest first; the sender takes (and `_drop_oldest` drops) slices
        self._pending_records = 0
        self._unacked: OrderedDict[int, tuple[collector_pb2.CaptureBatch, int]] = OrderedDict()  # id -> (batch, samples)
        self._unacked_records = 0
        self._building: dict[tuple, _Group] = {}  # records taken from the queue, compacted, not yet a batch
        self._keys: dict[tuple, tuple] = {}  # interned keys of common requests (`queue_item`)
        # the model version `offer_served` saw last, what it needs of it (`_use_source`)
        self._source: ModelVersion | None = None
        self._source_key: tuple | None = None
        self._source_rows_shape: tuple[int, int] | None = None
        self._source_prob_index: int | None = None
        self._source_count: list[int] = [0]
        self._building_records = 0
        self._next_batch_id = 1
        self._closed = False
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._ticked: asyncio.Event | None = None  # set every tick by the ticker thread (`_tick_from_thread`)
        self._ticker_stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._random = (rng or random.Random()).random
        self._warned = False

    @classmethod
    def from_settings(cls, settings: Any, registry: CollectorRegistry) -> Capture | None:
        """A Capture for `service.settings.ServerSettings`, or None when capture is off."""
        if settings.trainer_address is None or settings.capture_sampling <= 0:
            return None
        token = settings.trainer_token.get_secret_value() if settings.trainer_token is not None else None
        return cls(settings.trainer_address, registry=registry, sampling=settings.capture_sampling,
                   models=settings.capture_models, max_record_bytes=settings.capture_max_record_bytes,
                   queue_size=settings.capture_queue_size, batch_size=settings.capture_batch_size,
                   flush_interval=settings.capture_flush_interval,
                   token=token, tls_ca_file=settings.trainer_tls_ca_file)

    # -- the hot path ----------------------------------------------------------------------------

    def offer(self, request_id: str, model_name: str, model_version: str, inputs: Sequence[InferInput],
              probabilities: np.ndarray | None, rows: int = 1) -> None:
        """Queue one served request for capture: its InferInputs, its probability output (None for a
        model without one) and its batch size `rows` (1 for a model without batching), which is how
        many records it yields. O(1): one tuple appended (`queue_item`), nothing grouped or
        converted (the sender does that); never blocks, never raises. The arrays of a request other
        than the common one must not change afterwards."""
        try:
            if self._closed or (self._models is not None and model_name not in self._models):
                return
            if self._sampling < 1.0 and self._random() >= self._sampling:
                return
            self._pending.append(queue_item(_time_ns(), request_id, model_name, model_version, inputs, probabilities,
                                            rows, self._keys))
            self._pending_records += rows
            self._captured.setdefault(model_name, [0])[0] += rows
            if self._pending_records + self._unacked_records + self._building_records > self._capacity:
                self._drop_oldest()
        except Exception:  # noqa: BLE001 - logged (once) by _offer_failed
            self._offer_failed()

    def offer_served(self, request_id: str, source: ModelVersion, inputs: Sequence[InferInput],
                     outputs: Sequence[np.ndarray], rows: int) -> None:
        """`offer`, as the data plane calls it: for a request that model version `source` served
        after `ModelVersion.validate` accepted its inputs, with all of the version's `outputs`.
        When every one-sample request the version accepts is a common request of one key
        (`version_key`) and capture takes every request of its model, a one-sample request is
        queued under that key with no check of its input's name, datatype or shape (validation made
        them the version's), only of what the model computed (its probabilities' type and shape)
        and of its raw bytes being there: 88 bytecodes, against 143 when `offer` compared every
        part of a request with the last one's (docs/benchmarks.md section 2, session 16).
        Anything else goes through `offer`. Never blocks, never raises."""
        try:
            if source is not self._source:
                self._use_source(source)
            key = self._source_key
            if key is not None and rows == 1:
                raw = inputs[0].raw
                probabilities = outputs[self._source_prob_index]
                if raw is not None and probabilities.dtype is _F32 and probabilities.shape == self._source_rows_shape:
                    self._pending.append((_time_ns(), request_id, key, raw, probabilities.tobytes(), 1))
                    self._pending_records += 1
                    self._source_count[0] += 1
                    if self._pending_records + self._unacked_records + self._building_records > self._capacity:
                        self._drop_oldest()
                    return
            index = source.prob_index
            self.offer(request_id, source.name, source.version_str, inputs,
                       outputs[index] if index is not None else None, rows)
        except Exception:  # noqa: BLE001 - logged (once) by _offer_failed
            self._offer_failed()

    def _use_source(self, source: ModelVersion) -> None:
        """Make `source` the model version `offer_served` knows (one at a time, so a retired
        version is freed by the next request): its key, None unless capture takes every request of
        its model (open, the model not filtered out, no sampling), and its model's count."""
        key, rows_shape = version_key(source, self._keys)
        if self._closed or self._sampling < 1.0 or (self._models is not None and source.name not in self._models):
            key = None
        self._source, self._source_key, self._source_rows_shape = source, key, rows_shape
        self._source_prob_index = source.prob_index
        self._source_count = self._captured.setdefault(source.name, [0])

    def _offer_failed(self) -> None:
        """Log the exception being handled, the first time only: capture must not fail a request."""
        if not self._warned:
            self._warned = True
            log.exception("capture: offer failed (logged once)")

    def _drop_oldest(self) -> None:
        """Over the bound: drop the oldest queued (never sent) requests until within it."""
        dropped = count = 0
        pending = self._pending
        while count < len(pending) and (self._pending_records - dropped + self._unacked_records
                                        + self._building_records > self._capacity):
            dropped += _rows_of(pending[count])
            count += 1
        del pending[:count]
        self._pending_records -= dropped
        if dropped:
            self.metrics.dropped.labels(reason="queue_full").inc(dropped)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background sender (the trainer need not be up)."""
        self._wake = asyncio.Event()
        self._ticked = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._tick_from_thread, args=(loop, self._ticked), name="capture-ticker",
                         daemon=True).start()
        self._task = asyncio.create_task(self._run(), name="capture-sender")

    def _tick_from_thread(self, loop: asyncio.AbstractEventLoop, ticked: asyncio.Event) -> None:
        """The sender's clock: sets `ticked` on the loop every tick until `stop` (or the loop closes).
        A thread, not a timer on the serving loop: while any timer is pending, asyncio's `_run_once`
        checks the timer heap and reads the clock on every turn of the loop, about four turns per
        served request (docs/benchmarks.md, section 2, session 16)."""
        while not self._ticker_stop.wait(self._tick):
            try:
                loop.call_soon_threadsafe(ticked.set)
            except RuntimeError:  # the loop is closed
                return

    async def stop(self, timeout: float) -> None:
        """Stop accepting records, try for up to `timeout` seconds to deliver what is queued, then
        give up (the rest is counted as dropped, reason shutdown) and close the channel."""
        self._closed = True
        self._stopping = True
        self._source = None  # `offer_served` looks again, and finds capture closed
        if self._wake is not None:
            self._wake.set()
        if self._ticked is not None:
            self._ticked.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        lost = self._pending_records + self._unacked_records + self._building_records
        self._pending.clear()
        self._unacked.clear()
        self._building = {}
        self._pending_records = self._unacked_records = self._building_records = 0
        if lost:
            self.metrics.dropped.labels(reason="shutdown").inc(lost)
            log.warning("capture: %d records not acknowledged by the trainer at shutdown", lost)
        self._ticker_stop.set()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def depth(self) -> int:
        """Records queued, being converted or awaiting acknowledgement."""
        return self._pending_records + self._unacked_records + self._building_records

    # -- background sender -----------------------------------------------------------------------

    def _drained(self) -> bool:
        return not self._pending and not self._unacked and not self._building_records

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                acked = await self._session()
                if acked:
                    attempt = 0
                if self._stopping and self._drained():
                    return
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, _StreamBroken, grpc.aio.UsageError) as e:
                detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
                log.log(logging.INFO if attempt == 0 else logging.DEBUG,
                        "capture: stream to %s broken (%s); reconnecting", self.address, detail)
            except Exception:
                log.exception("capture: unexpected error in the sender; reconnecting")
            self.metrics.reconnects.inc()
            delay = random.uniform(0.0, min(self._backoff_max, self._backoff_initial * 2 ** min(attempt, 30)))
            attempt += 1
            await self._sleep(delay)
            if self._stopping and self._drained():
                return

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when stop() is called."""
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
            self._wake.clear()  # woken once by stop(); later backoffs sleep in full
        except TimeoutError:
            pass

    def _stub(self) -> collector_pb2_grpc.CollectorStub:
        if self._channel is None:
            options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
            if self._tls_ca_file is not None:
                from service.security import channel_credentials

                self._channel = grpc.aio.secure_channel(self.address, channel_credentials(self._tls_ca_file), options)
            else:
                self._channel = grpc.aio.insecure_channel(self.address, options)
        return collector_pb2_grpc.CollectorStub(self._channel)

    async def _session(self) -> bool:
        """One stream: resend unacknowledged batches, then send new ones until stopped and
        drained. Returns whether anything was acknowledged; raises when the stream breaks."""
        metadata = None
        if self._token is not None:
            from service.security import auth_metadata

            metadata = auth_metadata(self._token)
        call = self._stub().Stream(metadata=metadata)
        state = {"acked": False}
        reader = asyncio.create_task(self._read_acks(call, state))
        try:
            await self._accepted(call, reader)
            resend = list(self._unacked.values())
            for batch, samples in resend:
                await call.write(batch)
                self.metrics.sent.inc(samples)
            while True:
                if reader.done():
                    await _ended(reader)
                batch = await self._take_batch()
                if batch is not None:
                    await call.write(batch)
                    self.metrics.sent.inc(samples_in(batch))
                    continue
                if self._stopping and self._drained():
                    await call.done_writing()
                    await asyncio.wait_for(reader, 5.0)
                    return state["acked"]
                await self._next_tick()  # a moved window or a broken stream waits for it
        finally:
            reader.cancel()
            call.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _next_tick(self) -> None:
        """Wait for the ticker thread's next tick (at once if one came while the sender worked)."""
        assert self._ticked is not None
        await self._ticked.wait()
        self._ticked.clear()

    async def _accepted(self, call: Any, reader: asyncio.Task) -> None:
        """Wait until the trainer accepted the stream (its initial metadata) before writing, so a
        refusal (UNAUTHENTICATED, UNAVAILABLE) is raised with its own status: a write racing it is
        reported by grpc.aio as INTERNAL (grpc/grpc#36066). A trainer that sends no early metadata
        is written to after `HANDSHAKE_TIMEOUT_S`."""
        metadata = asyncio.ensure_future(call.initial_metadata())
        try:
            await asyncio.wait([metadata, reader], timeout=HANDSHAKE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            metadata.cancel()
        if reader.done() or call.done():
            await _ended(reader)

    async def _read_acks(self, call: Any, state: dict[str, bool]) -> None:
        while True:
            ack = await call.read()
            if ack is grpc.aio.EOF:
                return
            if ack.error:
                raise _StreamBroken(f"trainer did not store batch {ack.batch_id}: {ack.error}")
            sent = self._unacked.pop(ack.batch_id, None)
            if sent is not None:
                self._unacked_records -= sent[1]
                self.metrics.acknowledged.inc(sent[1])
                state["acked"] = True

    async def _take_batch(self) -> collector_pb2.CaptureBatch | None:
        """Convert what is queued (`_convert`), then the next batch to send, or None: the window
        is full, or the groups being built hold fewer than `batch_size` records and the oldest of
        them is younger than the flush interval (unless stopping). A batch holds whole requests,
        `batch_size` records or more when its last request has several."""
        await self._convert()
        if not self._building or len(self._unacked) >= self._max_in_flight:
            return None
        oldest = min(group.timestamps[0] for group in self._building.values())  # groups fill in served order
        if (self._building_records < self._batch_size and not self._stopping
                and _time_ns() - oldest < self._flush_interval * 1e9):
            return None
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        batch = collector_pb2.CaptureBatch(batch_id=batch_id, sender=self.sender)
        for group in self._building.values():
            try:
                group.write(batch.groups)
            except Exception:  # pragma: no cover - collect accepted its samples; kept as a last guard
                log.exception("capture: cannot build the capture group of %s version %s (%d records lost)",
                              group.model_name, group.model_version, len(group.ids))
        self._building = {}
        self._building_records = 0
        samples = samples_in(batch)
        if not samples:
            return None
        self._unacked[batch_id] = (batch, samples)
        self._unacked_records += samples
        return batch

    async def _convert(self) -> None:
        """Move queued requests into the groups being built, `CONVERT_CHUNK` requests at a time
        with a turn of the event loop in between (so serving never stalls behind a whole batch),
        until the queue is empty or the groups hold `batch_size` records. Each chunk is compacted
        at once: the requests' own objects are released one sender tick after they were served,
        not when their batch is sent, and their memory is reused hot by the next requests."""
        if len(self._keys) > MAX_KEYS:  # many signatures (variable shapes): start again
            self._keys.clear()
        pending = self._pending
        while pending and self._building_records < self._batch_size:
            room = self._batch_size - self._building_records
            if self._pending_records == len(pending):  # requests of one record each (the usual case)
                count = min(len(pending), room, CONVERT_CHUNK)
                items = pending[:count]
            else:
                taken = count = 0
                while taken < len(pending) and count < room and taken < CONVERT_CHUNK:
                    count += _rows_of(pending[taken])
                    taken += 1
                items = pending[:taken]
            del pending[:len(items)]
            self._pending_records -= count
            self._building_records += count
            self._build(items)
            if pending and self._building_records < self._batch_size:
                await asyncio.sleep(0)

    def _build(self, items: list[_Queued]) -> None:
        """Add a chunk of requests to the groups being built, compacted; if the chunk cannot be
        converted (one malformed output must not stop capture), request by request. A chunk of
        common requests of one key goes straight into its group (`_collect_uniform` checks all
        before it adds anything, and adding cannot fail half-way)."""
        building = self._building
        if _collect_uniform(items, building, self._max_record_bytes):
            for group in building.values():
                group.compact()  # a no-op for the groups this chunk did not touch
            return
        groups: dict[tuple, _Group] = {}
        try:
            truncated = _collect_each(items, groups, self._max_record_bytes)  # not uniform: checked above
        except Exception:
            log.debug("capture: chunk conversion failed; converting request by request", exc_info=True)
            truncated = 0
            for item in items:
                one: dict[tuple, _Group] = {}
                try:
                    truncated += collect([item], one, self._max_record_bytes)
                except Exception:
                    log.exception("capture: cannot build records for request %s", item[1])
                    self._building_records -= _rows_of(item)
                    continue
                self._absorb(one)
        else:
            self._absorb(groups)
        if truncated:
            self.metrics.dropped.labels(reason="too_large").inc(truncated)

    def _absorb(self, groups: dict[tuple, _Group]) -> None:
        building = self._building
        for key, group in groups.items():
            group.compact()
            mine = building.get(key)
            if mine is None:
                building[key] = group
            else:
                mine.absorb(group)
