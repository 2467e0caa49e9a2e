"""Loaders: every format reads good files, and every malformed input stops with a DataError that
names the file and the position (line:column for text, array/row/byte for binary formats)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.data.loaders import DataError, load


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def error_of(path: Path, **kw) -> str:
    kw.setdefault("label_column", "label")
    with pytest.raises(DataError) as info:
        load(path, **kw)
    return str(info.value)


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_infers_numeric_and_categorical_columns_and_missing_values(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "x,colour,label,y\n1.5,red,cat,2\n,blue,dog,NA\n3,,cat,4\n")
    t = load(f, label_column="label")
    assert t.feature_names == ["x", "colour", "y"]
    assert t.categorical == ["colour"]
    assert t.class_names == ["cat", "dog"]
    assert t.y.tolist() == [0, 1, 0]
    assert t.X.dtype == object and np.isnan(t.X[1, 0]) and t.X[2, 1] is None and np.isnan(t.X[1, 2])
    assert t.kind == "table" and "colour (categorical)" in t.describe()


def test_csv_numeric_labels_sort_numerically_and_normalise(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "a,label\n1,10\n2,2.0\n3,2\n4,1\n")
    t = load(f, label_column="label")
    assert t.X.dtype == np.float32
    assert t.class_names == ["1", "2", "10"]
    assert t.y.tolist() == [2, 1, 1, 0]


def test_csv_ragged_row_names_line_and_column(tmp_path: Path) -> None:
    f = write(tmp_path / "r.csv", "a,b,label\n1,2,0\n\n3,4\n")
    assert error_of(f) == f"{f}:4:3: ragged row: 2 fields, the header has 3"
    f = write(tmp_path / "r2.csv", "a,b,label\n1,2,0,9\n")
    assert error_of(f).startswith(f"{f}:2:4: ragged row")


def test_csv_non_numeric_cell_in_numeric_column(tmp_path: Path) -> None:
    f = write(tmp_path / "n.csv", "a,b,label\n1,2,0\n3,4,1\n5,oops,1\n")
    assert error_of(f) == f"{f}:4:2: non-numeric value 'oops' in numeric column 'b'"


def test_csv_multiline_quoted_field_keeps_line_numbers(tmp_path: Path) -> None:
    f = write(tmp_path / "q.csv", 'a,note,label\n1,"two\nlines",0\n2,x,1\n3,y,1\nz,w,0\n')
    # the record on line 6 starts after a record spanning lines 2-3
    err = error_of(f)
    assert err.startswith(f"{f}:6:1: non-numeric value 'z'")


def test_csv_label_column_absent_missing_label_and_empty(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "a,b\n1,2\n")
    assert error_of(f) == f"{f}:1:1: label column 'label' is absent (columns: a, b)"
    f = write(tmp_path / "m.csv", "a,label\n1,0\n2,\n")
    assert error_of(f) == f"{f}:3:2: missing label in column 'label'"
    assert error_of(write(tmp_path / "e.csv", "")) == f"{tmp_path / 'e.csv'}:1:1: empty file (expected a header line)"
    assert error_of(write(tmp_path / "h.csv", "a,label\n")) == f"{tmp_path / 'h.csv'}:2:1: no data rows after the header"
    assert "duplicate column name 'a'" in error_of(write(tmp_path / "d.csv", "a,a,label\n1,2,3\n"))


def test_unseen_class_in_holdout_and_schema_checks_with_like(tmp_path: Path) -> None:
    lab = load(write(tmp_path / "l.csv", "a,c,label\n1,x,0\n2,y,1\n"), label_column="label")
    f = write(tmp_path / "h.csv", "a,c,label\n1,x,0\n2,y,7\n")
    assert error_of(f, like=lab) == f"{f}:3:3: unseen class '7' in column 'label' (known classes: 0, 1)"
    f = write(tmp_path / "u.csv", "a,c\n1,x\nfoo,y\n")  # a was numeric in the labeled file
    assert error_of(f, require_labels=False, like=lab) == f"{f}:3:1: non-numeric value 'foo' in numeric column 'a'"
    f = write(tmp_path / "u2.csv", "a,z\n1,x\n")
    assert "feature column 'c' of" in error_of(f, require_labels=False, like=lab)
    # an unlabeled file: label column dropped, columns reordered like the labeled file
    u = load(write(tmp_path / "u3.csv", "c,label,a\nx,,5\n"), label_column="label", require_labels=False, like=lab)
    assert u.y is None and u.feature_names == ["a", "c"] and u.X[0, 0] == 5.0 and u.X[0, 1] == "x"


# --- JSON -----------------------------------------------------------------------------------------


def test_json_array_and_json_lines(tmp_path: Path) -> None:
    records = [{"a": 1, "b": "u", "label": "x"}, {"a": 2.5, "label": "y"}]
    t = load(write(tmp_path / "a.json", json.dumps(records, indent=1)), label_column="label")
    assert t.feature_names == ["a", "b"] and t.categorical == ["b"] and t.X[1, 1] is None
    t2 = load(write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in records) + "\n"), label_column="label")
    assert t2.y.tolist() == t.y.tolist() == [0, 1]


def test_json_errors_have_positions(tmp_path: Path) -> None:
    f = write(tmp_path / "b.json", '[\n  {"a": 1, "label": 0},\n  {"a": 2 "label": 1}\n]')
    assert error_of(f) == f"{f}:3:11: invalid JSON: Expecting ',' delimiter"
    f = write(tmp_path / "c.jsonl", '{"a": 1, "label": 0}\n{"a": 2, "label": 1}\n  {"a": "x", "label": 1}\n'
              '{"a": 4, "label": 1}\n')
    assert error_of(f) == f"{f}:3:3: field 'a': non-numeric value 'x' in numeric column 'a'"
    f = write(tmp_path / "d.jsonl", '{"a": 1, "label": 0}\n{"a": 2, "zz": 3, "label": 1}\n')
    assert error_of(f) == f"{f}:2:1: field 'zz' is not in the first record"
    f = write(tmp_path / "e.json", "[1, 2]")
    assert error_of(f) == f"{f}:1:2: a record must be a JSON object, found int"
    assert "empty file" in error_of(write(tmp_path / "f.json", "  \n"))


# --- Parquet --------------------------------------------------------------------------------------


def test_parquet_types_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    pd.DataFrame({"a": [1.0, None, 3.0], "flag": [True, False, True], "c": ["p", "q", None],
                  "label": [0, 1, 1]}).to_parquet(f)
    t = load(f, label_column="label")
    assert t.feature_names == ["a", "flag", "c"] and t.categorical == ["c"] and t.y.tolist() == [0, 1, 1]
    assert t.X[0, 1] == 1.0 and np.isnan(t.X[1, 0])
    g = tmp_path / "b.parquet"
    pd.DataFrame({"a": ["1", "2", "3", "nope"], "label": [0, 1, 1, 0]}).to_parquet(g)
    assert error_of(g) == f"{g}:row 4:column 'a': non-numeric value 'nope' in numeric column 'a'"
    h = tmp_path / "c.parquet"
    pd.DataFrame({"a": [1.0], "label": [None]}).to_parquet(h)
    assert error_of(h) == f"{h}:row 1:column 'label': missing label in column 'label'"


# --- NumPy .npz -----------------------------------------------------------------------------------


def test_npz_tables_images_and_names(tmp_path: Path) -> None:
    np.savez(tmp_path / "t.npz", X=np.arange(12.0).reshape(4, 3), y=np.array([1, 0, 1, 0]))
    t = load(tmp_path / "t.npz", label_column=None)
    assert t.kind == "table" and t.feature_names == ["f0", "f1", "f2"] and t.class_names == ["0", "1"]
    np.savez(tmp_path / "i.npz", images=np.zeros((3, 8, 8), np.uint8), labels=np.array([2, 0, 2]))
    i = load(tmp_path / "i.npz", label_column=None)
    assert i.kind == "image" and i.X.shape == (3, 1, 8, 8) and i.X.dtype == np.float32 and i.y.tolist() == [1, 0, 1]
    u = load(tmp_path / "i.npz", label_column=None, require_labels=False)
    assert u.y is None


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", features=np.zeros((2, 2)))
    assert "no feature array (expected one of X, x, images, data; found features)" in error_of(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", X=np.zeros((2, 2)))
    assert error_of(tmp_path / "b.npz").startswith(f"{tmp_path / 'b.npz'}: no labels (no label array")
    np.savez(tmp_path / "c.npz", X=np.zeros((3, 2)), y=np.array([0, 1]))
    assert "2 labels for 3 samples" in error_of(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 2)), y=np.array([0, 5]))
    assert error_of(tmp_path / "d.npz", class_names=["0", "1"]) == \
        f"{tmp_path / 'd.npz'}:array 'y':row 2: unseen class '5' (known classes: 0, 1)"
    np.savez(tmp_path / "e.npz", X=np.array([["a", "b"]]), y=np.array([0]))
    assert "non-numeric dtype" in error_of(tmp_path / "e.npz")
    (tmp_path / "f.npz").write_bytes(b"not a zip")
    assert "not a readable .npz file" in error_of(tmp_path / "f.npz")


# --- IDX ------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + \
        array.astype(np.uint8).tobytes()


def test_idx_images_with_sibling_labels_gz_and_raw(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 6))
    labels = np.array([3, 1, 3, 0, 1])
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(idx_bytes(images))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(idx_bytes(labels))
    t = load(tmp_path / "train-images-idx3-ubyte.gz", label_column=None)
    assert t.kind == "image" and t.X.shape == (5, 1, 4, 6) and np.array_equal(t.X[:, 0], images)
    assert t.class_names == ["0", "1", "3"] and t.y.tolist() == [2, 1, 2, 0, 1]
    (tmp_path / "raw-images-idx3-ubyte").write_bytes(idx_bytes(images))
    u = load(tmp_path / "raw-images-idx3-ubyte", label_column=None, require_labels=False)
    assert u.y is None and u.X.shape == (5, 1, 4, 6)
    assert "no labels file beside it" in error_of(tmp_path / "raw-images-idx3-ubyte")


def test_idx_bad_magic_and_size(tmp_path: Path) -> None:
    f = tmp_path / "x-images-idx3-ubyte"
    f.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    assert error_of(f, require_labels=False).startswith(f"{f}:byte 1: bad IDX magic 12340803")
    f.write_bytes(idx_bytes(np.zeros((2, 3, 3)))[:-4])
    assert error_of(f, require_labels=False) == \
        f"{f}:byte 31: bad IDX size: dimensions [2, 3, 3] need 34 bytes, the file has 30"


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    assert "unsupported file type" in error_of(write(tmp_path / "a.txt", "x"))
    assert error_of(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: no such file"
