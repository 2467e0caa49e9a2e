"""Tensor datatypes through a real server: raw tensors of every numeric type via tritonclient,
and typed `contents` requests answered with typed contents."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.fixtures.onnx_models import typed_model, write_version

DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT8": np.int8, "INT16": np.int16,
          "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "BOOL": np.bool_}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import start_pseudoserve

    tmp = tmp_path_factory.mktemp("dtypes")
    repo = tmp / "models"
    for name in DTYPES:
        write_version(repo, f"plus_{name.lower()}", 1, typed_model(name))
    process = start_pseudoserve(["--model-repository", str(repo)], workdir=tmp)
    yield process
    process.stop()


def _expected(x: np.ndarray) -> np.ndarray:
    return ~x if x.dtype == np.bool_ else x + x.dtype.type(1)


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_raw_roundtrip(server, datatype) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    x = (np.arange(8).reshape(2, 4) % 2 == 0) if datatype == "BOOL" else np.arange(8).reshape(2, 4).astype(DTYPES[datatype])
    tensor = grpcclient.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    result = client.infer(f"plus_{datatype.lower()}", [tensor], client_timeout=30)
    y = result.as_numpy("y")
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, _expected(x))
    metadata = client.get_model_metadata(f"plus_{datatype.lower()}", as_json=True)
    assert metadata["inputs"][0]["datatype"] == datatype


@pytest.mark.parametrize("datatype,field,values", [
    ("FP32", "fp32_contents", [0.5, 1.5, -2.0, 3.25]),
    ("INT64", "int64_contents", [1, -2, 3, 2**40]),
    ("INT8", "int_contents", [1, -2, 3, 100]),
    ("BOOL", "bool_contents", [True, False, True, True]),
])
def test_typed_contents(server, datatype, field, values) -> None:
    request = pb.ModelInferRequest(model_name=f"plus_{datatype.lower()}", id="typed")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, 4])
    getattr(tensor.contents, field).extend(values)
    with grpc.insecure_channel(server.url) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert not response.raw_output_contents
    out = response.outputs[0]
    assert out.datatype == datatype and list(out.shape) == [1, 4]
    expected = _expected(np.array(values, dtype=DTYPES[datatype]))
    np.testing.assert_array_equal(np.array(getattr(out.contents, field), dtype=DTYPES[datatype]), expected)


def test_typed_contents_out_of_range(server) -> None:
    request = pb.ModelInferRequest(model_name="plus_int8")
    request.inputs.add(name="x", datatype="INT8", shape=[1, 4]).contents.int_contents.extend([1, 2, 3, 300])
    with grpc.insecure_channel(server.url) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x': contents do not fit INT8" in info.value.details()
