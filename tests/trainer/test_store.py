"""SampleStore: capture batches, dedup, labels, pseudo-labels, retention, refusal of foreign or
corrupt files (which must stay byte-for-byte unmodified), reopening after a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from protos import collector_pb2, trainer_pb2
from tests.trainer.conftest import groups, make_record, random_records
from trainer.store import InvalidSampleError, Retention, SampleStore, StoreError


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_captured_records_round_trip_and_duplicates_are_stored_once(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    recs = random_records(10)
    with SampleStore(tmp_path / "s.db", registry=registry) as store:
        assert store.add_captured(groups(recs[:6])) == (6, 0)
        assert store.add_captured(groups(recs)) == (4, 6)  # a resent batch plus new ones
        assert store.counts()["unlabeled"] == 10
        # the byte count follows only the rows really inserted
        assert store.counts()["bytes"] == sum(r.nbytes for r in recs)
        ids, X = store.unlabeled_arrays()
        assert X.shape == (10, 4) and X.dtype == np.float32
        # newest first: the last record's features come first
        expected = recs[-1].x
        np.testing.assert_array_equal(X[0], expected)
        ids2, probs = store.served_probabilities()
        np.testing.assert_array_equal(ids, ids2)
        np.testing.assert_allclose(probs[0], recs[-1].probabilities, rtol=1e-6)
    assert _value(registry, "pseudoserve_trainer_stored_total") == 10
    assert _value(registry, "pseudoserve_trainer_duplicates_total") == 6
    assert _value(registry, "pseudoserve_trainer_samples", pool="unlabeled") == 10


def test_a_record_repeated_within_one_batch_is_stored_once(tmp_path: Path) -> None:
    recs = random_records(3)
    with SampleStore(tmp_path / "s.db") as store:
        assert store.add_captured(groups([recs[0], recs[1], recs[0], recs[2], recs[1]])) == (3, 2)
        assert store.counts()["unlabeled"] == 3
        assert store.counts()["bytes"] == sum(r.nbytes for r in recs)


def test_same_request_id_of_two_models_is_two_samples(tmp_path: Path) -> None:
    with SampleStore(tmp_path / "s.db") as store:
        a = make_record("same", np.zeros(4), [0.5, 0.5], model="a")
        b = make_record("same", np.ones(4), [0.5, 0.5], model="b")
        assert store.add_captured(groups([a, b, a])) == (2, 1)
        ids, X = store.unlabeled_arrays(model_name="b")
        assert len(ids) == 1 and X[0].tolist() == [1, 1, 1, 1]


def test_store_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SampleStore(path) as store:
        store.add_captured(groups(random_records(5)))
        store.add_labeled(np.eye(3, dtype=np.float32), np.array([0, 1, 2]), split="labeled")
        store.set_state("active_version", "3")
        store.record_round(trainer_pb2.RoundSummary(round=1, outcome="promoted", student_version="3"))
    with SampleStore(path) as store:
        counts = store.counts()
        assert (counts["unlabeled"], counts["labeled"]) == (5, 3)
        assert counts["bytes"] > 0
        assert store.get_state("active_version") == "3" and store.get_state("missing") is None
        assert [r.student_version for r in store.rounds()] == ["3"]
        assert store.add_captured(groups(random_records(5))) == (0, 5)


def test_labeled_and_holdout_sets_are_idempotent(tmp_path: Path) -> None:
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 2, 2])
    with SampleStore(tmp_path / "s.db") as store:
        assert store.add_labeled(X, y, split="labeled") == 6
        assert store.add_labeled(X, y, split="labeled") == 0
        assert store.add_labeled(X[:2], y[:2], split="holdout") == 2
        X2, y2 = store.labeled_arrays("labeled")
        np.testing.assert_array_equal(X2, X)
        assert y2.dtype == np.int64 and y2.tolist() == y.tolist()
        assert store.labeled_arrays("holdout")[0].shape == (2, 2)
        with pytest.raises(InvalidSampleError, match="split"):
            store.add_labeled(X, y, split="train")
        with pytest.raises(InvalidSampleError, match="X must be"):
            store.add_labeled(X, y[:3], split="labeled")


def test_submit_labels_by_request_id_and_by_sample(tmp_path: Path) -> None:
    with SampleStore(tmp_path / "s.db") as store:
        recs = random_records(5)
        store.add_captured(groups(recs))
        sample = trainer_pb2.Sample(inputs=[collector_pb2.Tensor(
            name="input", datatype="FP32", shape=[1, 4], data=np.full(4, 7, np.float32).tobytes())])
        accepted, unknown = store.submit_labels([
            trainer_pb2.LabelItem(request_id="req-3", label=2),
            trainer_pb2.LabelItem(request_id="nope", label=1),
            trainer_pb2.LabelItem(sample=sample, label=0),
        ])
        assert accepted == 2 and unknown == ["nope"]
        counts = store.counts()
        assert (counts["unlabeled"], counts["feedback"]) == (4, 2)
        X, y = store.labeled_arrays("feedback")
        np.testing.assert_array_equal(X[0], recs[3].x)
        assert y.tolist() == [2, 0] and X[1].tolist() == [7, 7, 7, 7]
        # a corrected label replaces the previous one
        assert store.submit_labels([trainer_pb2.LabelItem(request_id="req-3", label=1)]) == (1, [])
        assert store.labeled_arrays("feedback")[1].tolist() == [1, 0]


@pytest.mark.parametrize("item, message", [
    (trainer_pb2.LabelItem(request_id="req-1", label=-1), r"items\[0\].label"),
    (trainer_pb2.LabelItem(label=1), r"items\[0\]: set either"),
    (trainer_pb2.LabelItem(sample=trainer_pb2.Sample(), label=1), r"items\[0\].sample.inputs is empty"),
    (trainer_pb2.LabelItem(sample=trainer_pb2.Sample(inputs=[collector_pb2.Tensor(
        name="input", datatype="FP32", shape=[1, 4], data=b"123")]), label=1), r"items\[0\].sample.inputs\[0\].*bytes"),
    (trainer_pb2.LabelItem(sample=trainer_pb2.Sample(inputs=[collector_pb2.Tensor(
        name="input", datatype="FP32", shape=[2, 2], data=bytes(16))]), label=1), r"batch dimension 1"),
    (trainer_pb2.LabelItem(sample=trainer_pb2.Sample(inputs=[collector_pb2.Tensor(
        name="input", datatype="FP99", shape=[1, 1], data=bytes(4))]), label=1), r"FP99"),
])
def test_malformed_label_items_name_the_field_and_store_nothing(tmp_path: Path, item, message) -> None:
    with SampleStore(tmp_path / "s.db") as store:
        store.add_captured(groups(random_records(2)))
        with pytest.raises(InvalidSampleError, match=message):
            store.submit_labels([item])
        assert store.counts()["feedback"] == 0


def test_pseudo_labels_latest_round_wins_and_labeled_samples_drop_out(tmp_path: Path) -> None:
    with SampleStore(tmp_path / "s.db") as store:
        store.add_captured(groups(random_records(4)))
        ids, _ = store.unlabeled_arrays()
        store.set_pseudo_labels(ids[:3], np.array([0, 1, 2]), np.array([0.9, 0.8, 0.7]), 1)
        store.set_pseudo_labels(ids[:1], np.array([2]), np.array([0.95]), 2)
        assert store.pseudo_labels() == {int(ids[0]): 2, int(ids[1]): 1, int(ids[2]): 2}
        assert store.counts()["pseudo_labeled"] == 3
        # the newest unlabeled is req-3; labeling it removes its pseudo-label from the pool
        store.submit_labels([trainer_pb2.LabelItem(request_id="req-3", label=0)])
        assert store.counts()["pseudo_labeled"] == 2 and int(ids[0]) not in store.pseudo_labels()


def test_retention_max_samples_evicts_oldest_unlabeled_only(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with SampleStore(tmp_path / "s.db", retention=Retention(max_samples=5), registry=registry) as store:
        store.add_labeled(np.zeros((3, 4), np.float32), np.array([0, 1, 2]), split="holdout")
        store.add_captured(groups(random_records(4)))
        store.submit_labels([trainer_pb2.LabelItem(request_id="req-0", label=1)])  # feedback: kept
        store.add_captured(groups(random_records(6, start=4)))
        counts = store.counts()
        assert (counts["unlabeled"], counts["feedback"], counts["holdout"]) == (5, 1, 3)
        kept = [s.request_id for s in store.samples_by_id(store.unlabeled_arrays()[0])]
        assert kept == [f"req-{i}" for i in (9, 8, 7, 6, 5)]
    assert _value(registry, "pseudoserve_trainer_evicted_total", reason="max_samples") == 4


def test_retention_max_bytes_and_max_age(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with SampleStore(tmp_path / "a.db", registry=registry) as probe:
        probe.add_captured(groups(random_records(1)))
        one = probe.counts()["bytes"]
    with SampleStore(tmp_path / "s.db", retention=Retention(max_bytes=3 * one), registry=registry) as store:
        store.add_captured(groups(random_records(10)))
        assert store.counts()["unlabeled"] == 3 and store.counts()["bytes"] <= 3 * one
    assert _value(registry, "pseudoserve_trainer_evicted_total", reason="max_bytes") == 7
    with SampleStore(tmp_path / "t.db", retention=Retention(max_age_seconds=1e-9), registry=registry) as store:
        store.add_captured(groups(random_records(3)))  # stored, then already older than the limit at the next batch
        store.add_captured(groups(random_records(2, start=3)))
        assert store.counts()["unlabeled"] <= 2
    assert _value(registry, "pseudoserve_trainer_evicted_total", reason="max_age") >= 3


def test_truncated_records_are_stored_without_features(tmp_path: Path) -> None:
    rec = make_record("big", np.zeros(4), [0.2, 0.8])
    with SampleStore(tmp_path / "s.db") as store:
        assert store.add_captured(groups([rec], max_record_bytes=16)) == (1, 0)  # 16 input + 8 probability bytes
        assert store.counts()["unlabeled"] == 1
        assert len(store.unlabeled_arrays()[0]) == 0  # no features to train on
        assert len(store.served_probabilities()[0]) == 1


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.mark.parametrize("kind", ["text", "foreign_sqlite", "truncated_store", "garbage_pages", "newer_schema"])
def test_foreign_or_corrupt_file_is_refused_and_left_unmodified(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "store.db"
    if kind == "text":
        path.write_text("id,label\n1,2\n")
    elif kind == "foreign_sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t (a)")
        con.commit()
        con.close()
    else:
        with SampleStore(path) as store:
            store.add_captured(groups(random_records(300, features=64)))
        data = bytearray(path.read_bytes())
        if kind == "truncated_store":
            data = data[: len(data) // 2]
        elif kind == "garbage_pages":
            page = int.from_bytes(data[16:18], "big")
            data[page * 2: page * 2 + 2048] = bytes(range(256)) * 8  # overwrite inside a b-tree page
        else:
            data[60:64] = (99).to_bytes(4, "big")
        path.write_bytes(bytes(data))
    before = _snapshot(path)
    with pytest.raises(StoreError) as info:
        SampleStore(path)
    assert str(path) in str(info.value)
    assert _snapshot(path) == before


def test_directory_as_store_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory"):
        SampleStore(tmp_path)


def test_multi_row_multi_input_and_bytes_samples_keep_their_inputs_exactly(tmp_path: Path) -> None:
    """Every sample of a capture group keeps each input's bytes, datatype and per-sample shape."""
    from service.capture import build_batch, queue_item
    from service.domain import InferInput
    from service.tensors import encode_raw

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    words = np.array([[b"a"], [b"longer"]], dtype=object)
    probs = np.array([[0.9, 0.1], [0.3, 0.7]], dtype=np.float32)
    inputs = [InferInput("x", "FP32", (2, 3), x, x.tobytes()), InferInput("w", "BYTES", (2, 1), words, encode_raw(words))]
    item = queue_item(7, "two", "m", "2", inputs, probs, 2)
    with SampleStore(tmp_path / "s.db") as store:
        assert store.add_captured(build_batch([item], 1 << 20)[0]) == (2, 0)
        ids, X = store.unlabeled_arrays()
        assert X.tolist() == [x[1].tolist(), x[0].tolist()]  # newest first
        samples = store.samples_by_id(sorted(ids))
        assert [s.request_id for s in samples] == ["two#0", "two#1"]
        for row, sample in enumerate(samples):
            assert [(t.name, t.datatype, list(t.shape)) for t in sample.inputs] == [("x", "FP32", [1, 3]),
                                                                                  ("w", "BYTES", [1, 1])]
            assert sample.inputs[0].data == x[row].tobytes()
            assert sample.inputs[1].data == encode_raw(words[row:row + 1])
            np.testing.assert_allclose(sample.probabilities, probs[row], rtol=1e-6)
            assert sample.predicted_class == int(np.argmax(probs[row])) and sample.model_version == "2"


@pytest.mark.parametrize("break_group, message", [
    (lambda g: g.timestamp_ns.pop(), r"groups\[1\].timestamp_ns has 2 entries for 3"),
    (lambda g: g.margin.pop(), r"groups\[1\].margin has 2 entries"),
    (lambda g: setattr(g, "probabilities", g.probabilities[:-4]), r"groups\[1\].probabilities has 32 bytes; expected 36"),
    (lambda g: g.inputs[0].sizes.append(1), r"groups\[1\].inputs\[0\].sizes: 4 sizes"),
    (lambda g: setattr(g.inputs[0], "data", g.inputs[0].data[:-1]), r"groups\[1\].inputs\[0\].sizes"),
    (lambda g: g.truncated.append(3), r"groups\[1\].truncated names sample 3 of 3"),
])
def test_malformed_capture_group_names_the_column_and_stores_nothing(tmp_path: Path, break_group, message) -> None:
    good, bad = groups(random_records(2, start=10)), groups(random_records(3))
    break_group(bad[0])
    with SampleStore(tmp_path / "s.db") as store:
        with pytest.raises(InvalidSampleError, match=message):
            store.add_captured([*good, *bad])
        assert store.counts()["unlabeled"] == 0


def test_batches_larger_than_one_insert_statement_count_new_and_duplicate_rows(tmp_path: Path) -> None:
    """Rows go in by multi-row INSERT statements of at most 64 rows: counts must add up across them."""
    recs = random_records(150)
    with SampleStore(tmp_path / "s.db") as store:
        assert store.add_captured(groups(recs[:70])) == (70, 0)
        assert store.add_captured(groups(recs[40:] + recs[:5])) == (80, 35)  # duplicates spread over chunks
        assert store.counts()["unlabeled"] == 150
        assert store.counts()["bytes"] == sum(r.nbytes for r in recs)
        ids, X = store.unlabeled_arrays()
        assert len(ids) == 150 and X[0].tolist() == recs[149].x.tolist()


# the schema of store version 1, as trainer/store.py created it
_SCHEMA_1 = """
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pool TEXT NOT NULL,               -- unlabeled | feedback | labeled | holdout
    request_id TEXT,                  -- captured samples: the id the service returned
    model_name TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    timestamp_ns INTEGER NOT NULL,    -- when the service served it (captured) or it was added
    arrived_ns INTEGER NOT NULL,      -- when the store committed it (retention by age uses this)
    record BLOB,                      -- serialized CaptureRecord: inputs exactly as received, probabilities
    x BLOB,                           -- labeled/holdout rows: float32 features (captured rows decode `record`)
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


def _schema_1_store(path: Path, records: list[collector_pb2.CaptureRecord]) -> None:
    """A store as schema 1 wrote it: captured and feedback samples as serialized CaptureRecords."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(f"BEGIN; {_SCHEMA_1} PRAGMA application_id={0x50534453}; PRAGMA user_version=1; COMMIT;")
    for i, record in enumerate(records):
        blob = record.SerializeToString()
        con.execute("INSERT INTO samples (pool, request_id, model_name, model_version, timestamp_ns, arrived_ns, "
                    "record, predicted_class, confidence, margin, truncated, nbytes) "
                    "VALUES ('unlabeled', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.request_id, record.model_name, record.model_version, i + 1, i + 1, blob,
                     record.predicted_class, record.confidence, record.margin, int(record.truncated), len(blob)))
    x = np.full(4, 7, np.float32)
    feedback = collector_pb2.CaptureRecord(inputs=[collector_pb2.Tensor(name="input", datatype="FP32", shape=[1, 4],
                                                                        data=x.tobytes())]).SerializeToString()
    con.execute("INSERT INTO samples (pool, timestamp_ns, arrived_ns, record, x, x_shape, label, label_ns, nbytes) "
                "VALUES ('feedback', 9, 9, ?, ?, '[4]', 2, 9, ?)", (feedback, x.tobytes(), len(feedback) + 16))
    con.execute("INSERT INTO samples (pool, timestamp_ns, arrived_ns, x, x_shape, label, label_ns, nbytes) "
                "VALUES ('labeled', 9, 9, ?, '[4]', 1, 9, 16)", (np.ones(4, np.float32).tobytes(),))
    con.close()


def _v1_records() -> list[collector_pb2.CaptureRecord]:
    out = []
    for r in random_records(3):
        top = np.sort(r.probabilities)[::-1]
        out.append(collector_pb2.CaptureRecord(
            request_id=r.request_id, model_name=r.model, model_version=r.version, timestamp_ns=1,
            inputs=[collector_pb2.Tensor(name="input", datatype="FP32", shape=[1, 4], data=r.x.tobytes())],
            probabilities=r.probabilities.tolist(), predicted_class=int(np.argmax(r.probabilities)),
            confidence=float(top[0]), margin=float(top[0] - top[1])))
    out.append(collector_pb2.CaptureRecord(request_id="cut", model_name="classifier", model_version="1",
                                           probabilities=[0.5, 0.5, 0.0], predicted_class=0, truncated=True))
    return out


def test_schema_1_store_is_migrated_in_place_with_every_sample(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    records = _v1_records()
    _schema_1_store(path, records)
    with SampleStore(path) as store:
        counts = store.counts()
        assert (counts["unlabeled"], counts["feedback"], counts["labeled"]) == (4, 1, 1)
        assert counts["bytes"] == 3 * (16 + 12) + 12 + (16 + 16) + 16  # inputs + probabilities (+ x)
        ids, X = store.unlabeled_arrays()  # newest first; the truncated sample has no features
        assert X.tolist() == [np.frombuffer(r.inputs[0].data, np.float32).tolist() for r in records[2::-1]]
        ids, probs = store.served_probabilities()
        np.testing.assert_allclose(probs, [list(r.probabilities) for r in records[::-1]], rtol=1e-6)
        sample = store.samples_by_id([int(ids[-1])])[0]
        assert sample.request_id == "req-0" and sample.inputs[0].data == records[0].inputs[0].data
        assert store.labeled_arrays("feedback")[0].tolist() == [[7, 7, 7, 7]]
        assert store.add_captured(groups(random_records(2, start=10))) == (2, 0)  # schema 2 from here on
        assert store.add_captured(groups(random_records(1))) == (0, 1)  # migrated ids still deduplicate
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    assert "record" not in [c[1] for c in con.execute("PRAGMA table_info(samples)")]
    con.close()
    with SampleStore(path) as store:  # and it reopens as a schema-2 store
        assert store.counts()["unlabeled"] == 6


def test_schema_1_store_with_an_unreadable_record_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _schema_1_store(path, _v1_records())
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("UPDATE samples SET record = x'ffffffff' WHERE request_id = 'req-1'")
    before = con.execute("SELECT * FROM samples ORDER BY id").fetchall()
    con.close()
    with pytest.raises(StoreError, match=r"sample 2 holds an unreadable schema-1 record.*unchanged") as info:
        SampleStore(path)
    assert str(path) in str(info.value)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    assert con.execute("SELECT * FROM samples ORDER BY id").fetchall() == before
    con.close()


def test_samples_of_equal_sizes_are_stored_as_the_sample_by_sample_path_stores_them(tmp_path: Path) -> None:
    """A group whose samples all have the same byte counts (fixed shapes, none truncated) is cut
    in one pass per column; its rows must be those of the general path, which cuts sample by sample."""
    from service.capture import build_batch, queue_item
    from service.domain import InferInput
    from trainer import store as store_module

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    z = np.arange(6, dtype=np.int64).reshape(3, 2)
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]], dtype=np.float32)
    two_inputs = queue_item(7, "two", "m", "2", [InferInput("x", "FP32", (3, 4), x, x.tobytes()),
                                                 InferInput("z", "INT64", (3, 2), z, z.tobytes())], probs, 3)
    (multi,) = build_batch([two_inputs], 1 << 20)[0]
    (single,) = groups(random_records(5))
    for group in (multi, single):
        n, columns = len(group.request_ids), store_module._COLUMNS
        values, payload = store_module._group_values(group, "g", now=1)
        head = [(c.name, c.datatype, list(c.shape)) for c in group.inputs]
        blobs, specs, nbytes = store_module._mixed_inputs(group, head, [0] * n, n, group.classes)
        assert values[5::columns] == blobs and values[6::columns] == specs and values[12::columns] == nbytes
        assert payload == sum(nbytes) and values[0::columns] == list(group.request_ids)
        if group is multi:  # a sample's blob is its inputs' bytes one after the other
            assert values[columns + 5] == x[1].tobytes() + z[1].tobytes()
    with SampleStore(tmp_path / "s.db") as store:
        assert store.add_captured([multi]) == (3, 0)
        sample = store.samples_by_id([2])[0]
        assert sample.request_id == "two#1" and [t.data for t in sample.inputs] == [x[1].tobytes(), z[1].tobytes()]

