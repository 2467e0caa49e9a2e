"""Load labeled and unlabeled data from files into a `Table`, with errors that point at the cell.

Called by `pseudoserve fit`/`bootstrap` and by the online trainer for its `--labeled`/`--holdout`
files. Formats, chosen by extension:

- `.csv`: a header line, then one record per line. Ragged records are refused.
- `.json` (an array of records) and `.jsonl`/`.ndjson` (one record per line; a `.json` file that is
  not an array is read as JSON lines too). A key absent from a record is a missing value; a key not
  in the first record is refused.
- `.parquet`/`.pq`: numeric and boolean columns are numbers, string columns go through the same
  typing as CSV cells.
- `.npz` and IDX (`.gz`, `.idx`, `*-ubyte`): see `trainer.data.arrays`.

Column typing (text formats): a column is numeric when most of its present cells parse as numbers;
the cells of a numeric column that do not parse are errors ("non-numeric value"). Otherwise the
column is categorical: its strings are kept and one-hot encoded by the preprocessor. Missing cells
(empty, NA, NaN, null, None, n/a, ?) are NaN / None and get imputed. Pass `like=` (the labeled
table) when loading unlabeled or holdout files so that their columns must match by name and type;
they are reordered to the labeled file's order.

Labels: integral numbers are normalised ("1.0" == "1"); classes sort numerically when every label
is an integer, else as strings. A label column in an unlabeled file (`require_labels=False`) is
dropped. With `class_names` given, a label outside them is an "unseen class" error.

Every problem raises `DataError("<file>:<line>:<column>: <what>")` with 1-based positions (CSV line
numbers count the header line; JSON positions are those of the record's opening brace); binary
formats name the array, row and column instead of line and column.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none", "n/a", "?", "<na>"})
TEXT_SUFFIXES = (".csv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")


class DataError(ValueError):
    """Malformed input data; the message starts with the file and the position of the problem."""


@dataclass
class Table:
    """One loaded file: features (float32, or object when some columns are categorical strings),
    optional int64 labels indexing `class_names`, and what the columns are."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str]
    class_names: list[str] | None
    kind: str  # "table" | "image"
    source: Path
    categorical: list[str] = field(default_factory=list)  # names of the categorical columns

    def __len__(self) -> int:
        return len(self.X)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    def describe(self) -> str:
        """A one-line summary for logs: rows, columns (categorical ones marked), classes."""
        if self.kind == "image":
            cols = "x".join(str(d) for d in self.sample_shape) + " image"
        else:
            names = [f"{n} (categorical)" if n in self.categorical else n for n in self.feature_names]
            if len(names) > 24:  # the report lists them all; keep log lines readable
                names = names[:10] + [f"... {len(names) - 20} more ..."] + names[-10:]
            cols = ", ".join(names)
        labels = f"{len(self.class_names or [])} classes" if self.y is not None else "unlabeled"
        return f"{self.source}: {len(self.X)} rows, {labels}; features: {cols}"


# A position function: (data row index, column index or None) -> "file:line:col"
Where = Callable[[int, int | None], str]


def load(path: str | Path, *, label_column: str | None, class_names: Sequence[str] | None = None,
         kind: str | None = None, require_labels: bool = True, like: Table | None = None) -> Table:
    """Load `path` by extension. `require_labels=False` loads an unlabeled file (y=None); `like`
    forces the columns, their types and the classes of an earlier (labeled) table."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if like is not None and class_names is None:
        class_names = like.class_names
    name = path.name.lower()
    if name.endswith((".npz", ".gz", ".idx")) or "-ubyte" in name:
        from trainer.data import arrays
        table = arrays.load_array_file(path, class_names=class_names, require_labels=require_labels,
                                       kind=kind, error=DataError)
        if like is not None and table.sample_shape != like.sample_shape:
            raise DataError(f"{path}: samples have shape {table.sample_shape}, expected {like.sample_shape} "
                            f"as in {like.source}")
        return table
    if name.endswith(".csv"):
        columns, data, where = _read_csv(path)
    elif name.endswith((".json", ".jsonl", ".ndjson")):
        columns, data, where = _read_json(path)
    elif name.endswith((".parquet", ".pq")):
        columns, data, where = _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type (use .csv, .json, .jsonl, .parquet, .npz or IDX .gz)")
    return _build_table(path, columns, data, where, label_column=label_column, class_names=class_names,
                        require_labels=require_labels, like=like)


# ---------------------------------------------------------------------------------------------
# readers: each returns (column names, column -> 1-D array of cells, position function)


def _read_csv(path: Path) -> tuple[list[str], dict[str, np.ndarray], Where]:
    import pandas as pd

    starts: list[int] = []  # physical line where each data record starts
    with path.open(newline="", encoding="utf-8-sig", errors="strict") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            while header == []:
                header = next(reader, None)
            if header is None:
                raise DataError(f"{path}:1:1: empty file (expected a header line)")
            header_line = reader.line_num
            for j, col in enumerate(header):
                if not col.strip():
                    raise DataError(f"{path}:{header_line}:{j + 1}: empty column name in the header")
                if col in header[:j]:
                    raise DataError(f"{path}:{header_line}:{j + 1}: duplicate column name {col!r}")
            previous_end = reader.line_num
            for row in reader:
                start = previous_end + 1
                previous_end = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    col = min(len(row), len(header)) + 1
                    raise DataError(f"{path}:{start}:{col}: ragged row: {len(row)} fields, the header has "
                                    f"{len(header)}")
                starts.append(start)
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}:1: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:1:1: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not starts:
        raise DataError(f"{path}:{previous_end + 1}:1: no data rows after the header")
    frame = pd.read_csv(path, dtype=object, keep_default_na=False, na_filter=False, skip_blank_lines=True,
                        encoding="utf-8-sig")
    if len(frame) != len(starts):  # csv and pandas disagree about the records: trust neither silently
        raise DataError(f"{path}:1:1: could not parse the file consistently ({len(starts)} records by the csv "
                        f"module, {len(frame)} by pandas); check the quoting")
    data = {col: frame[col].to_numpy(dtype=object) for col in header}

    def where(row: int, col: int | None) -> str:
        return f"{path}:{starts[row] if row >= 0 else header_line}:{1 if col is None else col + 1}"

    return list(header), data, where


def _read_json(path: Path) -> tuple[list[str], dict[str, np.ndarray], Where]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:1:1: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def pos(offset: int) -> str:
        line = bisect.bisect_right(line_starts, offset)
        return f"{path}:{line}:{offset - line_starts[line - 1] + 1}"

    decoder = json.JSONDecoder()
    records: list[tuple[int, object]] = []
    first = len(text) - len(text.lstrip())
    if first == len(text):
        raise DataError(f"{path}:1:1: empty file (expected a JSON array of records or JSON lines)")
    if text[first] == "[":
        i = _skip_ws(text, first + 1)
        while i < len(text) and text[i] != "]":
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                raise DataError(f"{pos(exc.pos)}: invalid JSON: {exc.msg}") from None
            records.append((i, value))
            i = _skip_ws(text, end)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
            elif i < len(text) and text[i] != "]":
                raise DataError(f"{pos(i)}: expected ',' or ']' after a record")
        if i >= len(text):
            raise DataError(f"{pos(len(text))}: unterminated array (missing ']')")
        if _skip_ws(text, i + 1) != len(text):
            raise DataError(f"{pos(_skip_ws(text, i + 1))}: unexpected data after the array")
    else:
        for line_no, line in enumerate(text.split("\n")):
            i = _skip_ws(line, 0)
            if i == len(line):
                continue
            try:
                value, end = decoder.raw_decode(line, i)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no + 1}:{exc.pos + 1}: invalid JSON: {exc.msg}") from None
            if _skip_ws(line, end) != len(line):
                raise DataError(f"{path}:{line_no + 1}:{_skip_ws(line, end) + 1}: one JSON record per line "
                                "expected (extra data after the record)")
            records.append((line_starts[line_no] + i, value))
    if not records:
        raise DataError(f"{pos(first)}: no records")
    columns: list[str] = []
    for offset, rec in records:
        if not isinstance(rec, dict):
            raise DataError(f"{pos(offset)}: a record must be a JSON object, found {type(rec).__name__}")
        if not columns:
            columns = list(rec)
            if not columns:
                raise DataError(f"{pos(offset)}: the first record has no fields")
        for key, value in rec.items():
            if key not in columns:
                raise DataError(f"{pos(offset)}: field {key!r} is not in the first record")
            if isinstance(value, (dict, list)):
                raise DataError(f"{pos(offset)}: field {key!r}: nested {type(value).__name__} values are not supported")
    data = {c: np.array([rec.get(c) for _, rec in records], dtype=object) for c in columns}
    offsets = [o for o, _ in records]

    def where(row: int, col: int | None) -> str:
        base = pos(offsets[max(row, 0)])
        return base if col is None else f"{base}: field {columns[col]!r}"

    return columns, data, where


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _read_parquet(path: Path) -> tuple[list[str], dict[str, np.ndarray], Where]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: empty file (no rows)")
    columns = table.column_names
    if len(set(columns)) != len(columns):
        raise DataError(f"{path}: duplicate column names in {columns}")

    def where(row: int, col: int | None) -> str:
        place = f"{path}" + (f":row {row + 1}" if row >= 0 else "")
        return place + ("" if col is None else f":column {columns[col]!r}")

    data: dict[str, np.ndarray] = {}
    for j, name in enumerate(columns):
        chunk = table.column(name)
        t = chunk.type
        if pa.types.is_dictionary(t):
            chunk, t = chunk.cast(t.value_type), t.value_type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
            data[name] = chunk.cast(pa.float64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
            data[name] = np.array(chunk.to_pylist(), dtype=object)
        else:
            raise DataError(f"{where(-1, j)}: unsupported column type {t}")
    return columns, data, where


# ---------------------------------------------------------------------------------------------
# typing and labels


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_TOKENS


def _to_float(value: object) -> float | None:
    """The number a cell holds, NaN when missing, None when it is not a number."""
    if _is_missing(value):
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.number)):
        return float(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number


def _numeric_column(cells: np.ndarray, j: int, name: str, where: Where, force: bool) -> np.ndarray | None:
    """float64 values of a numeric column, or None when the column is categorical (most of its
    present cells are not numbers). With `force`, any non-number is an error."""
    if cells.dtype.kind == "f":
        return cells.astype(np.float64)
    values = np.empty(len(cells), dtype=np.float64)
    bad: list[int] = []
    for i, cell in enumerate(cells):
        number = _to_float(cell)
        if number is None:
            bad.append(i)
            number = math.nan
        values[i] = number
    present = int(np.count_nonzero(~np.isnan(values))) + len(bad)
    if not bad:
        return values
    if not force and len(bad) * 2 > present:
        return None
    first = bad[0]
    raise DataError(f"{where(first, j)}: non-numeric value {str(cells[first])!r} in numeric column {name!r}")


def _label_key(value: object) -> str | None:
    if _is_missing(value):
        return None
    number = _to_float(value)
    if number is not None and math.isfinite(number) and number == int(number):
        return str(int(number))
    return str(value).strip()


def sort_class_names(keys: set[str]) -> list[str]:
    """Integer-looking class names in numeric order, else in string order."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def _labels(cells: np.ndarray, j: int, name: str, where: Where,
            class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    keys = [_label_key(v) for v in cells]
    for i, key in enumerate(keys):
        if key is None:
            raise DataError(f"{where(i, j)}: missing label in column {name!r}")
    if class_names is None:
        class_names = sort_class_names(set(keys))  # type: ignore[arg-type]
    index = {str(c): k for k, c in enumerate(class_names)}
    y = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        if key not in index:
            raise DataError(f"{where(i, j)}: unseen class {key!r} in column {name!r} "
                            f"(known classes: {', '.join(map(str, class_names))})")
        y[i] = index[key]
    return y, [str(c) for c in class_names]


def _build_table(path: Path, columns: list[str], data: dict[str, np.ndarray], where: Where, *,
                 label_column: str | None, class_names: Sequence[str] | None, require_labels: bool,
                 like: Table | None) -> Table:
    y, names = None, None
    if require_labels:
        if label_column is None:
            raise DataError(f"{where(-1, None)}: no label column given (pass --label-column)")
        if label_column not in columns:
            raise DataError(f"{where(-1, None)}: label column {label_column!r} is absent "
                            f"(columns: {', '.join(columns)})")
        y, names = _labels(data[label_column], columns.index(label_column), label_column, where, class_names)
    features = [c for c in columns if c != label_column]
    if not features:
        raise DataError(f"{where(-1, None)}: no feature columns")
    forced_numeric: set[str] | None = None
    if like is not None:
        missing = [c for c in like.feature_names if c not in features]
        extra = [c for c in features if c not in like.feature_names]
        if missing:
            raise DataError(f"{where(-1, None)}: feature column {missing[0]!r} of {like.source} is absent")
        if extra:
            raise DataError(f"{where(-1, columns.index(extra[0]))}: column {extra[0]!r} is not a feature of "
                            f"{like.source}")
        features = list(like.feature_names)
        forced_numeric = {c for c in features if c not in like.categorical}
    numeric: dict[str, np.ndarray] = {}
    categorical: list[str] = []
    for name in features:
        j = columns.index(name)
        if forced_numeric is not None and name not in forced_numeric:
            categorical.append(name)
            continue
        values = _numeric_column(data[name], j, name, where, force=forced_numeric is not None)
        if values is None:
            categorical.append(name)
        else:
            bad = np.flatnonzero(np.isinf(values))
            if len(bad):
                raise DataError(f"{where(int(bad[0]), j)}: infinite value in column {name!r}")
            numeric[name] = values
    n = len(next(iter(data.values())))
    if categorical:
        X = np.empty((n, len(features)), dtype=object)
        for k, name in enumerate(features):
            if name in numeric:
                X[:, k] = numeric[name]
            else:
                X[:, k] = [None if _is_missing(v) else str(v).strip() for v in data[name]]
    else:
        X = np.stack([numeric[name] for name in features], axis=1).astype(np.float32)
    return Table(X=X, y=y, feature_names=features, class_names=names, kind="table", source=path,
                 categorical=categorical)
