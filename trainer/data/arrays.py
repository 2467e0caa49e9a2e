"""Binary array formats for `trainer.data.loaders.load`: NumPy `.npz` and MNIST-style IDX.

`.npz`: the features are the first present of the arrays `X`, `x`, `images`, `data`; the labels
the first present of `y`, `labels`, `target` (optional for unlabeled files); an optional
`class_names` array names the classes. 2-D features are a table (columns `f0`, `f1`, ...); 3-D
`(n, H, W)` and 4-D `(n, C, H, W)` features are images, kept as `(n, C, H, W)`.

IDX (`.gz` or uncompressed; `*-idx3-ubyte*` images, `*-idx1-ubyte*` labels): big-endian header
(two zero bytes, a type code, the number of dimensions), one uint32 per dimension, then the data.
Images `(n, rows, cols)` become `(n, 1, rows, cols)` float32 in their raw range (0..255 for
MNIST). Labels come from the sibling file whose name has `labels-idx1` in place of
`images-idx3` when it exists. Errors name the file and the array, row or byte that is wrong.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.data.loaders import DataError, Table, sort_class_names

FEATURE_ARRAYS = ("X", "x", "images", "data")
LABEL_ARRAYS = ("y", "labels", "target")
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_array_file(path: Path, *, class_names: Sequence[str] | None, require_labels: bool,
                    kind: str | None, error: type[DataError] = DataError) -> Table:
    if path.name.lower().endswith(".npz"):
        X, y_raw, names, label_source = _read_npz(path)
    else:
        X, y_raw, names, label_source = _read_idx_pair(path, require_labels)
    if X.dtype.kind not in "iufb":
        raise DataError(f"{path}:array 'X': non-numeric dtype {X.dtype}")
    if len(X) == 0:
        raise DataError(f"{path}:array 'X': empty (no samples)")
    if X.ndim == 3:
        X = X[:, None, :, :]
    if X.ndim not in (2, 4):
        raise DataError(f"{path}:array 'X': expected 2-D (table) or 3-D/4-D (images), found shape {X.shape}")
    X = X.astype(np.float32)
    table_kind = kind or ("image" if X.ndim == 4 else "table")
    if table_kind == "image" and X.ndim == 4:
        bad = np.argwhere(~np.isfinite(X))
        if len(bad):
            raise DataError(f"{path}:array 'X':row {bad[0][0] + 1}: non-finite pixel at {tuple(int(i) for i in bad[0][1:])}")
    elif np.isinf(X).any():
        row, col = np.argwhere(np.isinf(X))[0]
        raise DataError(f"{path}:array 'X':row {row + 1}:column {col + 1}: infinite value")
    feature_names = [f"f{i}" for i in range(X.shape[1])] if X.ndim == 2 else ["image"]
    y = None
    out_names = list(class_names) if class_names is not None else None
    if require_labels:
        if y_raw is None:
            raise DataError(f"{path}: no labels ({label_source})")
        if len(y_raw) != len(X):
            raise DataError(f"{label_source}: {len(y_raw)} labels for {len(X)} samples in {path}")
        keys = [_key(v) for v in y_raw]
        if out_names is None:
            out_names = [str(n) for n in names] if names is not None else sort_class_names(set(keys))
        index = {str(c): k for k, c in enumerate(out_names)}
        y = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            if key not in index:
                raise DataError(f"{label_source}:row {i + 1}: unseen class {key!r} "
                                f"(known classes: {', '.join(out_names)})")
            y[i] = index[key]
    return Table(X=X, y=y, feature_names=feature_names, class_names=out_names if require_labels else None,
                 kind=table_kind, source=path)


def _key(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - zipfile/format errors all mean "not a readable npz"
        raise DataError(f"{path}: not a readable .npz file: {exc}") from None
    feat = next((k for k in FEATURE_ARRAYS if k in arrays), None)
    if feat is None:
        raise DataError(f"{path}: no feature array (expected one of {', '.join(FEATURE_ARRAYS)}; "
                        f"found {', '.join(arrays) or 'none'})")
    lab = next((k for k in LABEL_ARRAYS if k in arrays), None)
    X = arrays[feat]
    if X.dtype.kind not in "iufb":
        raise DataError(f"{path}:array {feat!r}: non-numeric dtype {X.dtype}")
    y = arrays[lab] if lab else None
    if y is not None and y.ndim != 1:
        raise DataError(f"{path}:array {lab!r}: labels must be 1-D, found shape {y.shape}")
    where = f"{path}:array {lab!r}" if lab else f"no label array: expected one of {', '.join(LABEL_ARRAYS)}"
    return X, y, arrays.get("class_names"), where


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable IDX file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise DataError(f"{path}:byte 1: bad IDX magic {raw[:4].hex() or '(empty file)'} "
                        "(expected 0000 then a type code and the number of dimensions)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}:byte {len(raw) + 1}: IDX header truncated ({ndim} dimensions need {header} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}:byte {min(len(raw), expected) + 1}: bad IDX size: dimensions {dims} need "
                        f"{expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def labels_sibling(path: Path) -> Path | None:
    """The labels file that goes with an IDX images file, if it exists."""
    name = re.sub(r"images-idx3", "labels-idx1", path.name)
    if name == path.name:
        return None
    candidate = path.with_name(name)
    return candidate if candidate.exists() else None


def _read_idx_pair(path: Path, require_labels: bool) -> tuple[np.ndarray, np.ndarray | None, None, str]:
    X = _read_idx(path)
    if X.ndim == 1:
        raise DataError(f"{path}: this is an IDX labels file; pass the images file (*-images-idx3-ubyte*)")
    sibling = labels_sibling(path)
    y = None
    if sibling is not None and require_labels:
        y = _read_idx(sibling)
        if y.ndim != 1:
            raise DataError(f"{sibling}: expected a 1-D IDX labels file, found dimensions {list(y.shape)}")
    where = str(sibling) if sibling else f"no labels file beside it (looked for {re.sub('images-idx3', 'labels-idx1', path.name)})"
    return X, y, None, where
