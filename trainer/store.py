"""The trainer's durable sample store: one SQLite file holding the captured traffic, the labeled
seed set, the holdout set, feedback labels, pseudo-labels, round summaries and a little state.

Written by the collector (`add_captured`, one transaction per capture batch: an acknowledgement
sent after it returns means committed) and the control API (`submit_labels`); read by the
control API and the online self-training loop. All calls are serialized by one lock, so the store
has exactly one writer; async callers run it in a dedicated single-thread executor.

Durability: WAL journal with `synchronous=FULL`, so a commit is fsynced to the WAL before
`add_captured` returns. (WAL + NORMAL would already survive `kill -9` of the process, because a
committed transaction is in the OS page cache; FULL also survives a power cut or kernel crash,
for one fsync per capture batch.) A file that is not ours is refused before it is written to:
the 100-byte SQLite header is read directly and its application id (`PSDS`) and schema version
(`user_version`) checked, then the database is opened read-only for a quick_check, and only
then opened for writing.

Pools: a captured sample is `unlabeled` until a true label arrives by SubmitLabels, which moves it
to `feedback` (inputs submitted with a label are `feedback` too); `labeled` and `holdout` come
from `add_labeled`. Pseudo-labels are columns of unlabeled samples, not a pool of their own.
Retention limits apply to the `unlabeled` pool only (labels are never evicted): oldest first by
arrival, counted in `pseudoserve_trainer_evicted_total{reason}`.

Rows: a captured sample is stored as the bytes of its inputs exactly as received (every input's
raw bytes one after another), a JSON spec of those inputs (`[[name, datatype, shape, nbytes],
...]`, one string shared by the samples of a capture group), its served probabilities as float32
bytes and the scalar columns queries need. The collector's hot path only slices the columns of a
CaptureGroup (no message per sample; for samples of equal sizes, no Python step per sample either)
and binds them to multi-row INSERTs; features and probabilities are decoded when read. X rows:
the first input tensor, decoded with `service.tensors.decode_raw`, cast to float32, with its
leading batch dimension (of 1) removed. Arrays returned are stacked rows of one per-sample shape;
rows of another shape (a model whose input changed) are left out with a warning.

Schema versions: 2 is the above; a schema-1 store (a serialized CaptureRecord per captured sample)
is migrated in place when opened, in one transaction (`_migrate_from_1`), so it is either fully
migrated or left exactly as it was.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import operator
import sqlite3
import struct
import threading
import time
from collections import Counter as _Tally
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
from prometheus_client import CollectorRegistry

from protos import collector_pb2, trainer_pb2
from trainer.metrics import TrainerMetrics, trainer_metrics

log = logging.getLogger(__name__)

APPLICATION_ID = 0x50534453  # "PSDS": pseudoserve sample store
SCHEMA_VERSION = 2  # 2: captured samples as input/probability columns (1: serialized records, migrated)
_SQLITE_MAGIC = b"SQLite format 3\x00"
SPLITS = ("labeled", "holdout")
_VICTIM = "id, nbytes, pseudo_label IS NOT NULL"  # columns eviction needs to keep the counts exact
ARRAY_POOLS = ("labeled", "holdout", "feedback")

_SCHEMA = """
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pool TEXT NOT NULL,               -- unlabeled | feedback | labeled | holdout
    request_id TEXT,                  -- captured samples: the id the service returned
    model_name TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    timestamp_ns INTEGER NOT NULL,    -- when the service served it (captured) or it was added
    arrived_ns INTEGER NOT NULL,      -- when the store committed it (retention by age uses this)
    inputs BLOB,                      -- captured/feedback rows: every input's raw bytes as received, concatenated
    input_spec TEXT,                  -- JSON [[name, datatype, shape, nbytes], ...] of `inputs`
    probabilities BLOB,               -- captured rows: served probabilities, float32 little-endian
    x BLOB,                           -- labeled/holdout/feedback rows: float32 features (captured rows decode `inputs`)
    x_shape TEXT,                     -- JSON per-sample shape of x
    predicted_class INTEGER,
    confidence REAL,
    margin REAL,
    truncated INTEGER NOT NULL DEFAULT 0,
    label INTEGER,                    -- true label (seed, holdout or feedback)
    label_ns INTEGER,
    pseudo_label INTEGER,
    pseudo_confidence REAL,
    pseudo_round INTEGER,
    nbytes INTEGER NOT NULL           -- payload bytes, for retention and the bytes gauge
);
CREATE UNIQUE INDEX samples_request ON samples(request_id, model_name) WHERE request_id IS NOT NULL;
CREATE INDEX samples_pool ON samples(pool, id);
CREATE TABLE rounds (round INTEGER PRIMARY KEY, summary BLOB NOT NULL);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(Exception):
    """The store file cannot be used (foreign, corrupt, newer schema, unopenable); the message
    names the file, which was not modified."""


class InvalidSampleError(ValueError):
    """A sample or label given to the store is malformed; the message names the field."""


@dataclass(frozen=True)
class Retention:
    """Limits on the captured unlabeled pool; None = unlimited. Oldest samples go first."""

    max_samples: int | None = None
    max_bytes: int | None = None
    max_age_seconds: float | None = None


@dataclass(frozen=True)
class StoredSample:
    """One sample as ListUncertain returns it."""

    id: int
    request_id: str
    model_version: str
    probabilities: np.ndarray
    predicted_class: int
    inputs: list[collector_pb2.Tensor]


def _check_header(path: Path) -> int:
    """Refuse a non-empty file that is not a pseudoserve store, reading only its header; returns
    its schema version (0 for an empty file)."""
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as e:
        raise StoreError(f"{path}: cannot read the sample store: {e.strerror or e}") from e
    if not header:
        return 0  # empty file: a new store
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"{path}: not a pseudoserve sample store (not a SQLite database)")
    (user_version,) = struct.unpack(">i", header[60:64])  # header layout: sqlite.org/fileformat.html
    (application_id,) = struct.unpack(">I", header[68:72])
    if application_id != APPLICATION_ID:
        raise StoreError(f"{path}: a SQLite database of another application (application_id "
                         f"{application_id:#x}, expected {APPLICATION_ID:#x}); refusing to use it as the sample store")
    if user_version > SCHEMA_VERSION:
        raise StoreError(f"{path}: sample store schema {user_version} is newer than this pseudoserve "
                         f"understands ({SCHEMA_VERSION})")
    if user_version < 1:
        raise StoreError(f"{path}: sample store has no schema version (incomplete initialisation?)")
    return user_version


def _verify_read_only(path: Path) -> None:
    """quick_check the existing database through a read-only connection."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: the sample store is corrupt: {e}") from e
    problems = [r[0] for r in rows if r[0] != "ok"]
    if problems:
        raise StoreError(f"{path}: the sample store is corrupt: {'; '.join(problems[:3])}")
    missing = {"samples", "rounds", "state"} - tables
    if missing:
        raise StoreError(f"{path}: the sample store lacks its tables {sorted(missing)}")


def _migrate_from_1(con: sqlite3.Connection, path: Path) -> None:
    """Schema 1 -> 2 in one transaction (all or nothing): captured and feedback rows kept a
    serialized CaptureRecord in `record`; they get `inputs`, `input_spec` and `probabilities`
    (and `nbytes` counted as schema 2 counts it), then `record` is dropped."""
    log.info("%s: migrating the sample store from schema 1 to 2", path)
    try:
        con.execute("BEGIN IMMEDIATE")
        for column in ("inputs BLOB", "input_spec TEXT", "probabilities BLOB"):
            con.execute(f"ALTER TABLE samples ADD COLUMN {column}")
        last = 0
        while True:
            rows = con.execute("SELECT id, record, length(x) FROM samples WHERE record IS NOT NULL AND id > ? "
                               "ORDER BY id LIMIT 1000", (last,)).fetchall()
            if not rows:
                break
            updates = []
            for row_id, blob, x_bytes in rows:
                try:
                    record = collector_pb2.CaptureRecord.FromString(blob)
                except Exception as e:  # protobuf's DecodeError
                    raise StoreError(f"{path}: sample {row_id} holds an unreadable schema-1 record ({e}); the store "
                                     f"was not migrated and is unchanged") from e
                inputs, spec = _stored_inputs(record.inputs) if record.inputs else (None, None)
                probs = np.asarray(record.probabilities, dtype="<f4").tobytes() if record.probabilities else None
                updates.append((inputs, spec, probs, len(inputs or b"") + len(probs or b"") + (x_bytes or 0), row_id))
            con.executemany("UPDATE samples SET inputs = ?, input_spec = ?, probabilities = ?, nbytes = ? "
                            "WHERE id = ?", updates)
            last = rows[-1][0]
        con.execute("ALTER TABLE samples DROP COLUMN record")
        con.execute("PRAGMA user_version = 2")
        con.execute("COMMIT")
    except BaseException as e:
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()
        if isinstance(e, sqlite3.Error):
            raise StoreError(f"{path}: cannot migrate the sample store from schema 1: {e}; it is unchanged") from e
        raise


def row_from_tensor(tensor: collector_pb2.Tensor, field: str) -> tuple[np.ndarray, list[int]]:
    """Decode one tensor of a single sample (leading batch dimension 1) to a float32 row."""
    from service.tensors import decode_raw  # the trainer may import service.tensors

    shape = list(tensor.shape)
    if not shape or shape[0] != 1:
        raise InvalidSampleError(f"{field}.shape {shape} must start with the batch dimension 1 (one sample)")
    try:
        array = decode_raw(tensor.data, tensor.datatype, shape)
    except Exception as e:
        raise InvalidSampleError(f"{field}: {e}") from e
    try:
        row = np.ascontiguousarray(array, dtype=np.float32).reshape(shape[1:])
    except (TypeError, ValueError) as e:
        raise InvalidSampleError(f"{field}: datatype {tensor.datatype} cannot be used as float32 features: {e}") from e
    return row, shape[1:]


@functools.lru_cache(maxsize=1024)
def _spec(text: str) -> list:
    """A parsed input_spec (a store holds a few distinct ones: one per model input signature,
    more only for BYTES inputs, whose sizes vary). Callers must not modify it."""
    return json.loads(text)


def _stored_inputs(tensors: Sequence[collector_pb2.Tensor]) -> tuple[bytes, str]:
    """The `inputs` and `input_spec` columns of one sample's tensors (undone by input_tensors)."""
    return (b"".join(t.data for t in tensors),
            json.dumps([[t.name, t.datatype, list(t.shape), len(t.data)] for t in tensors]))


def input_tensors(inputs: bytes | None, input_spec: str | None) -> list[collector_pb2.Tensor]:
    """The stored input tensors of one sample (none when its inputs were truncated)."""
    if inputs is None or not input_spec:
        return []
    out, offset = [], 0
    for name, datatype, shape, nbytes in _spec(input_spec):
        out.append(collector_pb2.Tensor(name=name, datatype=datatype, shape=shape, data=inputs[offset:offset + nbytes]))
        offset += nbytes
    return out


def _features(x: bytes | None, x_shape: str | None, inputs: bytes | None, input_spec: str | None) -> np.ndarray | None:
    """One stored sample's float32 feature row, or None when it has none (truncated/undecodable)."""
    if x is not None:
        return np.frombuffer(x, dtype=np.float32).reshape(json.loads(x_shape))
    tensors = input_tensors(inputs, input_spec)
    if not tensors:
        return None
    first = tensors[0]
    try:
        if first.datatype == "FP32" and len(first.shape) >= 1 and first.shape[0] == 1:
            return np.frombuffer(first.data, dtype=np.float32).reshape(list(first.shape)[1:])
        return row_from_tensor(first, f"stored sample input {first.name!r}")[0]
    except (InvalidSampleError, ValueError) as e:
        log.warning("stored %s", e)
        return None


def _stack(rows: list[np.ndarray | None], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Stack the feature rows of the majority shape; returns (X, mask of the rows kept)."""
    shapes = [r.shape if r is not None else None for r in rows]
    tally = _Tally(s for s in shapes if s is not None)
    if not tally:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(len(rows), dtype=bool)
    shape, _ = tally.most_common(1)[0]
    keep = np.array([s == shape for s in shapes], dtype=bool)
    other = sum(1 for s in shapes if s is not None and s != shape)
    if other:
        log.warning("%s: %d rows of another input shape than %s left out", where, other, list(shape))
    return np.stack([r for r, k in zip(rows, keep) if k]).astype(np.float32, copy=False), keep


_INSERT_CHUNK = 64  # rows per multi-row INSERT (64 x 13 parameters, far below SQLite's limit)


@functools.lru_cache(maxsize=_INSERT_CHUNK)
def _insert_captured(n: int) -> str:
    """INSERT OR IGNORE of `n` captured rows in one statement: ~25 % less CPU per row than
    executemany, which steps (and releases the GIL) once per row."""
    values = ", ".join(["('unlabeled', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    return ("INSERT OR IGNORE INTO samples (pool, request_id, model_name, model_version, timestamp_ns, arrived_ns, "
            f"inputs, input_spec, probabilities, predicted_class, confidence, margin, truncated, nbytes) VALUES {values}")


_first = operator.itemgetter(0)
_COLUMNS = 13  # values per captured row in `_insert_captured`, in its column order


def _group_values(group: collector_pb2.CaptureGroup, field: str, now: int) -> tuple[list, int]:
    """The INSERT parameters of one CaptureGroup's rows, row after row (`_COLUMNS` values each),
    and their payload bytes. The collector's hot path: every column is built as a whole (slices of
    the group's joined bytes, repeated constants) and interleaved by extended-slice assignment, so
    no Python step runs per sample when the samples have equal sizes (fixed-shape inputs, none
    truncated). A group whose columns disagree raises InvalidSampleError naming `field` and the
    column; nothing is stored."""
    n = len(group.request_ids)
    for column, values in (("timestamp_ns", group.timestamp_ns), ("predicted_class", group.predicted_class)):
        if len(values) != n:
            raise InvalidSampleError(f"{field}.{column} has {len(values)} entries for {n} request_ids")
    width = group.classes
    if width:
        for column, values in (("confidence", group.confidence), ("margin", group.margin)):
            if len(values) != n:
                raise InvalidSampleError(f"{field}.{column} has {len(values)} entries for {n} request_ids")
        if len(group.probabilities) != 4 * width * n:
            raise InvalidSampleError(f"{field}.probabilities has {len(group.probabilities)} bytes; expected "
                                     f"{4 * width * n} ({n} samples x {width} classes x 4)")
        probabilities = _split(group.probabilities, 4 * width, n)
        confidence, margin = list(group.confidence), list(group.margin)
    else:
        probabilities = confidence = margin = [None] * n
    truncated = [0] * n
    for index in group.truncated:
        if index >= n:
            raise InvalidSampleError(f"{field}.truncated names sample {index} of {n}")
        truncated[index] = 1
    for j, column in enumerate(group.inputs):
        if len(column.sizes) != n or sum(column.sizes) != len(column.data):
            raise InvalidSampleError(f"{field}.inputs[{j}].sizes: {len(column.sizes)} sizes summing to "
                                     f"{sum(column.sizes)} for {n} samples and {len(column.data)} bytes")
    head = [(c.name, c.datatype, list(c.shape)) for c in group.inputs]
    sizes = [list(c.sizes) for c in group.inputs]
    if n and sizes and not group.truncated and all(s[0] and s.count(s[0]) == n for s in sizes):
        # every sample has the same (non-zero) byte count per input, none truncated: one blob size
        # and one spec for all
        uniform = [s[0] for s in sizes]
        blob_size = sum(uniform)
        if len(group.inputs) == 1:
            inputs = _split(group.inputs[0].data, blob_size, n)
        else:
            inputs = [b"".join(parts) for parts in zip(*(_split(c.data, size, n)
                                                           for c, size in zip(group.inputs, uniform)))]
        specs = [json.dumps([[*h, size] for h, size in zip(head, uniform)])] * n
        nbytes = [blob_size + 4 * width] * n
    else:
        inputs, specs, nbytes = _mixed_inputs(group, head, truncated, n, width)
    timestamps = list(group.timestamp_ns)
    if 0 in timestamps:
        timestamps = [timestamp or now for timestamp in timestamps]
    values: list = [None] * (_COLUMNS * n)
    for position, column in enumerate((list(group.request_ids), [group.model_name] * n, [group.model_version] * n,
                                       timestamps, [now] * n, inputs, specs, probabilities,
                                       list(group.predicted_class), confidence, margin, truncated, nbytes)):
        values[position::_COLUMNS] = column
    return values, sum(nbytes)


def _split(data: bytes, size: int, n: int) -> list[bytes]:
    """`data` cut into `n` pieces of `size` bytes (`size` * `n` == len(data)), in one C-level pass."""
    if not size:
        return [b""] * n
    return list(map(_first, struct.iter_unpack(f"{size}s", data)))


def _mixed_inputs(group: collector_pb2.CaptureGroup, head: list, truncated: list[int], n: int,
                  width: int) -> tuple[list, list, list[int]]:
    """(blob, spec, payload bytes) per sample of a group whose samples differ in size (truncated
    samples, BYTES inputs): the samples cut one by one; a truncated sample has no blob or spec."""
    columns, sizes = [], []
    for column in group.inputs:
        ends = list(itertools.accumulate(column.sizes))
        data = column.data
        columns.append([data[end - size:end] for end, size in zip(ends, column.sizes)])
        sizes.append(column.sizes)
    if len(columns) == 1:
        inputs = columns[0]
    else:
        inputs = [b"".join(parts) for parts in zip(*columns)] if columns else [b""] * n
    specs_by_sizes: dict[tuple, str] = {}
    specs = []
    for per_sample in zip(*sizes) if sizes else [()] * n:
        spec = specs_by_sizes.get(per_sample)
        if spec is None:
            spec = specs_by_sizes[per_sample] = json.dumps([[*h, size] for h, size in zip(head, per_sample)])
        specs.append(spec)
    probability_bytes = 4 * width
    blobs, kept_specs, nbytes = [], [], []
    for blob, spec, cut in zip(inputs, specs, truncated):
        blobs.append(None if cut else blob)
        kept_specs.append(None if cut else spec)
        nbytes.append((0 if cut else len(blob)) + probability_bytes)
    return blobs, kept_specs, nbytes


class SampleStore:
    """The SQLite sample store (see the module docstring). Thread-safe; one writer at a time."""

    def __init__(self, path: Path, *, retention: Retention = Retention(),
                 registry: CollectorRegistry | None = None) -> None:
        self.path = Path(path)
        self.retention = retention
        self._metrics: TrainerMetrics = trainer_metrics(registry if registry is not None else CollectorRegistry())
        self._lock = threading.Lock()
        self._con = self._open()
        with self._lock:
            self._recount()
        self._publish()

    # -- opening ---------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if path.is_dir():
            raise StoreError(f"{path}: is a directory, not a sample store file")
        existing = path.exists() and path.stat().st_size > 0
        version = SCHEMA_VERSION
        if existing:
            version = _check_header(path)
            _verify_read_only(path)
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"{path}: cannot create the sample store's folder: {e.strerror or e}") from e
        try:
            con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            if not existing:  # schema and header ids in one transaction: all or nothing
                con.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA application_id={APPLICATION_ID}; "
                                  f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open the sample store: {e}") from e
        if version == 1:
            _migrate_from_1(con, path)
        return con

    def close(self) -> None:
        """Checkpoint the WAL and close the file."""
        with self._lock:
            try:
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:  # pragma: no cover - best effort
                log.warning("%s: WAL checkpoint at close failed: %s", self.path, e)
            self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------

    def add_captured(self, groups: Sequence[collector_pb2.CaptureGroup]) -> tuple[int, int]:
        """Store the CaptureGroups of one capture batch in one transaction; returns (stored,
        duplicates). Duplicates are samples whose (request_id, model_name) is already stored (a
        resent batch) or repeated within the batch. A malformed group raises InvalidSampleError
        and nothing of the batch is stored."""
        now = time.time_ns()
        values: list = []
        payload = 0
        for i, group in enumerate(groups):
            group_values, group_bytes = _group_values(group, f"groups[{i}]", now)
            values += group_values
            payload += group_bytes
        rows = len(values) // _COLUMNS
        with self._lock:
            try:
                with self._transaction():
                    # the unique (request_id, model_name) index turns resent and repeated records
                    # into ignored inserts; new rows get ids above the current maximum
                    last_id = self._con.execute("SELECT COALESCE(MAX(id), 0) FROM samples").fetchone()[0]
                    stored = 0
                    step = _INSERT_CHUNK * _COLUMNS
                    for start in range(0, len(values), step):  # one statement per chunk of rows
                        chunk = values[start:start + step]
                        stored += self._con.execute(_insert_captured(len(chunk) // _COLUMNS), chunk).rowcount
                    if stored == rows:
                        nbytes = payload
                    else:
                        nbytes = self._con.execute("SELECT COALESCE(SUM(nbytes), 0) FROM samples WHERE id > ?",
                                                   (last_id,)).fetchone()[0]
                    self._counts["bytes"] += nbytes
                    self._counts["unlabeled"] += stored
                    evicted = self._evict(now)
            except BaseException:
                self._recount()  # the transaction rolled back: the in-memory counts must follow
                raise
            counts = dict(self._counts)
        duplicates = rows - stored
        self._metrics.stored.inc(stored)
        self._metrics.duplicates.inc(duplicates)
        for reason, n in evicted.items():
            self._metrics.evicted.labels(reason=reason).inc(n)
        self._publish(counts)
        return stored, duplicates

    def add_labeled(self, X: np.ndarray, y: np.ndarray, *, split: str) -> int:
        """Add a labeled seed set (split "labeled") or holdout set ("holdout"); returns rows added.
        Adding the same content to the same split again adds nothing (restarts are idempotent)."""
        if split not in SPLITS:
            raise InvalidSampleError(f"split must be one of {SPLITS}, got {split!r}")
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y)
        if X.ndim < 2 or y.ndim != 1 or len(X) != len(y):
            raise InvalidSampleError(f"X must be (n, *features) and y (n,); got X{X.shape} y{y.shape}")
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
            raise InvalidSampleError("y must hold non-negative integer class indices")
        digest = hashlib.sha256(X.tobytes() + str(X.shape).encode() + y.astype(np.int64).tobytes()).hexdigest()
        key = f"labeled_digest:{split}:{digest}"
        now = time.time_ns()
        shape = json.dumps(list(X.shape[1:]))
        with self._lock, self._transaction():
            if self._con.execute("SELECT 1 FROM state WHERE key = ?", (key,)).fetchone():
                return 0
            rows = [(split, now, now, x.tobytes(), shape, int(label), now, x.nbytes) for x, label in zip(X, y)]
            self._con.executemany(
                "INSERT INTO samples (pool, timestamp_ns, arrived_ns, x, x_shape, label, label_ns, nbytes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._con.execute("INSERT INTO state (key, value) VALUES (?, ?)", (key, str(len(rows))))
        self._recount_and_publish()
        return len(rows)

    def submit_labels(self, items: Sequence[trainer_pb2.LabelItem]) -> tuple[int, list[str]]:
        """Store true labels: by request id (the captured sample moves to the feedback pool; every
        model's sample with that id is labeled) or as inputs plus label (a new feedback sample).
        Returns (accepted, unknown request ids). Malformed items raise InvalidSampleError naming
        `items[i]...` and nothing is stored."""
        now = time.time_ns()
        new_rows = []
        for i, item in enumerate(items):
            if item.label < 0:
                raise InvalidSampleError(f"items[{i}].label must be a class index >= 0, got {item.label}")
            target = item.WhichOneof("target")
            if target is None:
                raise InvalidSampleError(f"items[{i}]: set either request_id or sample")
            if target == "request_id" and not item.request_id:
                raise InvalidSampleError(f"items[{i}].request_id is empty")
            if target == "sample":
                if not item.sample.inputs:
                    raise InvalidSampleError(f"items[{i}].sample.inputs is empty")
                row, per_sample = row_from_tensor(item.sample.inputs[0], f"items[{i}].sample.inputs[0]")
                blob, spec = _stored_inputs(item.sample.inputs)
                new_rows.append(("feedback", now, now, blob, spec, row.tobytes(), json.dumps(per_sample), item.label,
                                 now, len(blob) + row.nbytes))
        accepted, unknown = 0, []
        with self._lock, self._transaction():
            for item in items:
                if item.WhichOneof("target") != "request_id":
                    continue
                cur = self._con.execute(
                    "UPDATE samples SET pool = 'feedback', label = ?, label_ns = ? "
                    "WHERE request_id = ? AND pool IN ('unlabeled', 'feedback')", (item.label, now, item.request_id))
                if cur.rowcount:
                    accepted += 1
                else:
                    unknown.append(item.request_id)
            self._con.executemany(
                "INSERT INTO samples (pool, timestamp_ns, arrived_ns, inputs, input_spec, x, x_shape, label, label_ns, "
                "nbytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", new_rows)
        self._recount_and_publish()
        return accepted + len(new_rows), unknown

    def set_pseudo_labels(self, ids: np.ndarray, labels: np.ndarray, confidences: np.ndarray, round_index: int) -> None:
        """Record the pseudo-labels a round assigned (the latest round's label wins)."""
        rows = [(int(label), float(conf), int(round_index), int(i)) for i, label, conf in zip(ids, labels, confidences)]
        with self._lock, self._transaction():
            self._con.executemany(
                "UPDATE samples SET pseudo_label = ?, pseudo_confidence = ?, pseudo_round = ? WHERE id = ?", rows)
        self._recount_and_publish()

    def record_round(self, summary: trainer_pb2.RoundSummary) -> None:
        """Insert or replace the summary of round `summary.round`."""
        with self._lock, self._transaction():
            self._con.execute("INSERT OR REPLACE INTO rounds (round, summary) VALUES (?, ?)",
                              (summary.round, summary.SerializeToString()))

    def set_state(self, key: str, value: str) -> None:
        """Persist a small string value (active version, counters of the online loop)."""
        with self._lock, self._transaction():
            self._con.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    # -- reading ---------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Pool sizes plus `pseudo_labeled` (unlabeled samples with a pseudo-label) and `bytes`."""
        with self._lock:
            return dict(self._counts)

    def labeled_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(X float32 (n, *shape), y int64) of the labeled, holdout or feedback pool, oldest first."""
        if split not in ARRAY_POOLS:
            raise InvalidSampleError(f"split must be one of {ARRAY_POOLS}, got {split!r}")
        with self._lock:
            rows = self._con.execute("SELECT x, x_shape, inputs, input_spec, label FROM samples WHERE pool = ? AND "
                                     "(x IS NOT NULL OR truncated = 0) ORDER BY id", (split,)).fetchall()
        X, keep = _stack([_features(*r[:4]) for r in rows], f"{self.path} pool {split}")
        y = np.array([r[4] for r in rows], dtype=np.int64)[keep] if rows else np.zeros(0, dtype=np.int64)
        return X, y

    def unlabeled_arrays(self, *, limit: int | None = None,
                         model_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids int64, X float32) of captured samples without a true label, newest first
        (all of them when `limit` is None), optionally of one model."""
        rows = self._unlabeled_rows("id, x, x_shape, inputs, input_spec", "truncated = 0", limit, model_name)
        X, keep = _stack([_features(*r[1:]) for r in rows], f"{self.path} unlabeled pool")
        ids = np.array([r[0] for r in rows], dtype=np.int64)[keep] if rows else np.zeros(0, dtype=np.int64)
        return ids, X

    def _unlabeled_rows(self, columns: str, condition: str, limit: int | None,
                        model_name: str | None) -> list[tuple]:
        """Rows of the unlabeled pool meeting `condition` (a fixed SQL fragment), newest first."""
        sql = f"SELECT {columns} FROM samples WHERE pool = 'unlabeled' AND {condition}"
        args: list[object] = []
        if model_name is not None:
            sql += " AND model_name = ?"
            args.append(model_name)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            return self._con.execute(sql, args).fetchall()

    def served_probabilities(self, *, limit: int | None = None,
                             model_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids int64, probabilities float32 (n, classes)) the service answered for the
        unlabeled pool, newest first; rows with another class count than the newest are left out."""
        rows = self._unlabeled_rows("id, probabilities", "probabilities IS NOT NULL", limit, model_name)
        rows = [r for r in rows if r[1]]
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        nbytes = len(rows[0][1])
        kept = [r for r in rows if len(r[1]) == nbytes]
        probs = np.frombuffer(b"".join(r[1] for r in kept), dtype="<f4").reshape(len(kept), nbytes // 4)
        return np.array([r[0] for r in kept], dtype=np.int64), probs.astype(np.float32)

    def samples_by_id(self, ids: Sequence[int]) -> list[StoredSample]:
        """The stored samples with these ids, in the order asked (missing ids are skipped)."""
        found: dict[int, StoredSample] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[start:start + 500]]
                marks = ",".join("?" * len(chunk))
                for row in self._con.execute(
                        f"SELECT id, request_id, model_version, predicted_class, probabilities, inputs, input_spec "
                        f"FROM samples WHERE id IN ({marks})", chunk):
                    found[row[0]] = StoredSample(row[0], row[1] or "", row[2],
                                                 np.frombuffer(row[4] or b"", dtype="<f4").astype(np.float32),
                                                 int(row[3] if row[3] is not None else -1),
                                                 input_tensors(row[5], row[6]))
        return [found[int(i)] for i in ids if int(i) in found]

    def pseudo_labels(self) -> dict[int, int]:
        """Sample id -> latest pseudo-label, for samples still unlabeled."""
        with self._lock:
            return dict(self._con.execute(
                "SELECT id, pseudo_label FROM samples WHERE pool = 'unlabeled' AND pseudo_label IS NOT NULL"))

    def rounds(self) -> list[trainer_pb2.RoundSummary]:
        """Every recorded round summary, in round order."""
        with self._lock:
            rows = self._con.execute("SELECT summary FROM rounds ORDER BY round").fetchall()
        return [trainer_pb2.RoundSummary.FromString(r[0]) for r in rows]

    def get_state(self, key: str) -> str | None:
        """A value stored by set_state, or None."""
        with self._lock:
            row = self._con.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- internals -------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._con)

    def _recount(self) -> None:
        """Count every pool from the table (O(n); captured batches update the counts in place)."""
        counts = {pool: 0 for pool in ("unlabeled", "labeled", "holdout", "feedback")}
        for pool, n in self._con.execute("SELECT pool, COUNT(*) FROM samples GROUP BY pool"):
            counts[pool] = n
        counts["pseudo_labeled"] = self._con.execute(
            "SELECT COUNT(*) FROM samples WHERE pool = 'unlabeled' AND pseudo_label IS NOT NULL").fetchone()[0]
        counts["bytes"] = self._con.execute("SELECT COALESCE(SUM(nbytes), 0) FROM samples").fetchone()[0]
        self._counts = counts

    def _recount_and_publish(self) -> None:
        with self._lock:
            self._recount()
        self._publish()

    def _publish(self, counts: dict[str, int] | None = None) -> None:
        if counts is None:
            with self._lock:
                counts = dict(self._counts)
        for pool in ("unlabeled", "labeled", "holdout", "feedback", "pseudo_labeled"):
            self._metrics.samples.labels(pool=pool).set(counts[pool])
        self._metrics.store_bytes.set(counts["bytes"])

    def _evict(self, now_ns: int) -> dict[str, int]:
        """Apply retention to the unlabeled pool inside the caller's transaction."""
        evicted: dict[str, int] = {}
        r = self.retention
        if r.max_age_seconds is not None:
            cutoff = now_ns - int(r.max_age_seconds * 1e9)
            self._delete("max_age", f"SELECT {_VICTIM} FROM samples WHERE pool = 'unlabeled' AND arrived_ns < ? "
                         "ORDER BY id", (cutoff,), evicted)
        if r.max_samples is not None:
            n = self._counts["unlabeled"]
            if n > r.max_samples:
                self._delete("max_samples", f"SELECT {_VICTIM} FROM samples WHERE pool = 'unlabeled' "
                             "ORDER BY id LIMIT ?", (n - r.max_samples,), evicted)
        if r.max_bytes is not None:
            total = self._con.execute(
                "SELECT COALESCE(SUM(nbytes), 0) FROM samples WHERE pool = 'unlabeled'").fetchone()[0]
            if total > r.max_bytes:
                excess, victims = total - r.max_bytes, []
                for victim in self._con.execute(
                        f"SELECT {_VICTIM} FROM samples WHERE pool = 'unlabeled' ORDER BY id"):
                    victims.append(victim)
                    excess -= victim[1]
                    if excess <= 0:
                        break
                self._delete_rows("max_bytes", victims, evicted)
        return evicted

    def _delete(self, reason: str, select: str, args: tuple, evicted: dict[str, int]) -> None:
        self._delete_rows(reason, self._con.execute(select, args).fetchall(), evicted)

    def _delete_rows(self, reason: str, victims: list[tuple[int, int, int]], evicted: dict[str, int]) -> None:
        """Delete unlabeled samples given as (id, nbytes, has pseudo-label) rows."""
        if not victims:
            return
        self._con.executemany("DELETE FROM samples WHERE id = ?", [(v[0],) for v in victims])
        self._counts["bytes"] -= sum(v[1] for v in victims)
        self._counts["unlabeled"] -= len(victims)
        self._counts["pseudo_labeled"] -= sum(v[2] for v in victims)
        evicted[reason] = evicted.get(reason, 0) + len(victims)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def __enter__(self) -> None:
        self._con.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            # SQLite has already rolled back after some errors (SQLITE_FULL, SQLITE_IOERR): a
            # second ROLLBACK would raise and hide the real error
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
            return
        try:
            self._con.execute("COMMIT")
        except sqlite3.Error:
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
            raise
