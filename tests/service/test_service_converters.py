"""Tensor codec and protobuf <-> domain converters."""

from __future__ import annotations

import numpy as np
import pytest

from protos import inference_pb2 as pb
from service import converters
from service.domain import InferOutput, InferResponse
from service.errors import InvalidArgument
from service.runtime import choose_providers
from service.tensors import DATATYPES, datatype_of, decode_raw, encode_raw


@pytest.mark.parametrize("name", [n for n in DATATYPES if n != "BYTES"])
def test_raw_roundtrip_every_numeric_type(name: str) -> None:
    dt = DATATYPES[name]
    array = (np.arange(6) % 2).astype(dt.dtype).reshape(2, 3)
    raw = encode_raw(array)
    assert len(raw) == 6 * dt.dtype.itemsize
    decoded = decode_raw(raw, name, [2, 3])
    np.testing.assert_array_equal(decoded, array)
    assert datatype_of(decoded).name == name


def test_bytes_roundtrip_and_errors() -> None:
    array = np.array([b"a", b"", "caf\u00e9".encode()], dtype=object)
    np.testing.assert_array_equal(decode_raw(encode_raw(array), "BYTES", [3]), array)
    with pytest.raises(InvalidArgument, match="ends inside the length"):
        decode_raw(b"\x01\x00", "BYTES", [1])
    with pytest.raises(InvalidArgument, match="past the end"):
        decode_raw(b"\x09\x00\x00\x00ab", "BYTES", [1])


def test_big_endian_arrays_are_encoded_little_endian() -> None:
    array = np.array([1.5, -2.0], dtype=">f4")
    assert encode_raw(array) == np.array([1.5, -2.0], dtype="<f4").tobytes()


def test_byte_size_mismatch_is_a_value_error_naming_the_tensor() -> None:
    with pytest.raises(ValueError, match="input 'x': expected 16 bytes for FP32 \\[2, 2\\], got 12"):
        decode_raw(b"\0" * 12, "FP32", [2, 2], name="input 'x'")


def test_request_from_proto_raw_and_typed() -> None:
    raw = pb.ModelInferRequest(model_name="m", id="r1")
    raw.inputs.add(name="x", datatype="INT32", shape=[1, 2])
    raw.raw_input_contents.append(np.array([[7, 8]], dtype="<i4").tobytes())
    raw.outputs.add(name="y")
    request = converters.infer_request_from_proto(raw)
    assert request.raw_outputs and request.outputs == ["y"] and request.id == "r1"
    np.testing.assert_array_equal(request.inputs[0].data, [[7, 8]])
    assert request.inputs[0].raw == raw.raw_input_contents[0]

    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="UINT8", shape=[3]).contents.uint_contents.extend([1, 2, 255])
    request = converters.infer_request_from_proto(typed)
    assert not request.raw_outputs and request.inputs[0].data.dtype == np.uint8 and request.inputs[0].raw is None

    fp16 = pb.ModelInferRequest(model_name="m")
    fp16.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidArgument, match="FP16 has no typed contents field"):
        converters.infer_request_from_proto(fp16)


def test_response_to_proto_raw_and_typed() -> None:
    outputs = [InferOutput("p", "FP32", np.array([[0.25, 0.75]], np.float32)),
               InferOutput("c", "INT64", np.array([1], np.int64))]
    raw = converters.infer_response_to_proto(InferResponse("m", "2", "id", outputs, raw_outputs=True))
    assert [o.name for o in raw.outputs] == ["p", "c"] and len(raw.raw_output_contents) == 2
    assert list(raw.outputs[0].shape) == [1, 2]
    typed = converters.infer_response_to_proto(InferResponse("m", "2", "id", outputs, raw_outputs=False))
    assert not typed.raw_output_contents
    assert list(typed.outputs[0].contents.fp32_contents) == [0.25, 0.75]
    assert list(typed.outputs[1].contents.int64_contents) == [1]
    half = [InferOutput("h", "FP16", np.array([1.0], np.float16))]
    assert converters.infer_response_to_proto(InferResponse("m", "1", "i", half, raw_outputs=False)).raw_output_contents


def test_provider_choice_filters_by_availability() -> None:
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                            ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                            ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
