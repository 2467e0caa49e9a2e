"""Tensor datatypes of the Open Inference Protocol and their raw (little-endian, row-major)
encoding, shared by the service converters and the trainer (which decodes captured inputs).

One table maps each protocol datatype name (FP32, INT64, BYTES, ...) to its numpy dtype, Triton's
model_config `TYPE_*` name, onnxruntime's type string and the typed-contents field of
`InferTensorContents`. BYTES tensors use Triton's raw encoding: each element is a 4-byte
little-endian length followed by that many bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Datatype:
    """One protocol datatype and its equivalents elsewhere."""

    name: str  # Open Inference Protocol name, e.g. "FP32"
    dtype: np.dtype  # little-endian numpy dtype (object for BYTES)
    config_type: str  # model_config DataType enum name, e.g. "TYPE_FP32"
    ort_type: str  # onnxruntime NodeArg.type, e.g. "tensor(float)"
    contents_field: str | None  # InferTensorContents field for typed contents (None: raw only)


_TABLE = [
    Datatype("BOOL", np.dtype("?"), "TYPE_BOOL", "tensor(bool)", "bool_contents"),
    Datatype("UINT8", np.dtype("<u1"), "TYPE_UINT8", "tensor(uint8)", "uint_contents"),
    Datatype("UINT16", np.dtype("<u2"), "TYPE_UINT16", "tensor(uint16)", "uint_contents"),
    Datatype("UINT32", np.dtype("<u4"), "TYPE_UINT32", "tensor(uint32)", "uint_contents"),
    Datatype("UINT64", np.dtype("<u8"), "TYPE_UINT64", "tensor(uint64)", "uint64_contents"),
    Datatype("INT8", np.dtype("<i1"), "TYPE_INT8", "tensor(int8)", "int_contents"),
    Datatype("INT16", np.dtype("<i2"), "TYPE_INT16", "tensor(int16)", "int_contents"),
    Datatype("INT32", np.dtype("<i4"), "TYPE_INT32", "tensor(int32)", "int_contents"),
    Datatype("INT64", np.dtype("<i8"), "TYPE_INT64", "tensor(int64)", "int64_contents"),
    Datatype("FP16", np.dtype("<f2"), "TYPE_FP16", "tensor(float16)", None),
    Datatype("FP32", np.dtype("<f4"), "TYPE_FP32", "tensor(float)", "fp32_contents"),
    Datatype("FP64", np.dtype("<f8"), "TYPE_FP64", "tensor(double)", "fp64_contents"),
    Datatype("BYTES", np.dtype(object), "TYPE_STRING", "tensor(string)", "bytes_contents"),
]

DATATYPES: dict[str, Datatype] = {d.name: d for d in _TABLE}
BY_CONFIG_TYPE: dict[str, Datatype] = {d.config_type: d for d in _TABLE}
BY_ORT_TYPE: dict[str, Datatype] = {d.ort_type: d for d in _TABLE}
_BY_NUMPY: dict[np.dtype, Datatype] = {d.dtype.newbyteorder("="): d for d in _TABLE if d.name != "BYTES"}


def datatype(name: str, *, field: str = "datatype") -> Datatype:
    """The table entry for a protocol datatype name; InvalidArgument naming `field` otherwise."""
    try:
        return DATATYPES[name]
    except KeyError:
        raise InvalidArgument(f"{field}: unknown datatype {name!r} (expected one of {', '.join(DATATYPES)})") from None


def datatype_of(array: np.ndarray) -> Datatype:
    """The protocol datatype of a numpy array (object/str/bytes arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return DATATYPES["BYTES"]
    try:
        return _BY_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None


def element_count(shape: list[int] | tuple[int, ...], *, name: str = "tensor") -> int:
    """Number of elements of `shape`; InvalidArgument for negative dimensions."""
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"{name}: shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def decode_raw(data: bytes, datatype_name: str, shape: list[int] | tuple[int, ...], *, name: str = "tensor") -> np.ndarray:
    """Decode raw tensor bytes to a numpy array of `shape` without copying (read-only for
    numeric types). Raises InvalidArgument (a ValueError) naming `name` when the byte size does
    not match the datatype and shape."""
    dt = datatype(datatype_name, field=f"{name}.datatype")
    count = element_count(shape, name=name)
    if dt.name == "BYTES":
        return _decode_bytes(data, count, name).reshape(shape)
    expected = count * dt.dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"{name}: expected {expected} bytes for {dt.name} {list(shape)}, got {len(data)}")
    return np.frombuffer(data, dtype=dt.dtype).reshape(shape)


def encode_raw(array: np.ndarray) -> bytes:
    """Raw little-endian row-major bytes of `array` (Triton's length-prefixed form for BYTES)."""
    dt = datatype_of(array)
    if dt.name == "BYTES":
        return _encode_bytes(array)
    if array.dtype != dt.dtype:  # big-endian input: swap to the wire order
        array = array.astype(dt.dtype)
    return array.tobytes()


def _decode_bytes(data: bytes, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(data):
            raise InvalidArgument(f"{name}: BYTES data ends inside the length of element {i}")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise InvalidArgument(f"{name}: BYTES element {i} claims {length} bytes past the end of the data")
        out[i] = data[offset:offset + length]
        offset += length
    if offset != len(data):
        raise InvalidArgument(f"{name}: {len(data) - offset} bytes left over after {count} BYTES elements")
    return out


def _encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)
