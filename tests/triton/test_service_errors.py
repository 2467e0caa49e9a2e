"""Table-driven bad requests against a real server: each gets the right gRPC status code and a
message naming the field at fault, and the server keeps serving afterwards."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

ROW = np.random.default_rng(0).random((1, 64), dtype=np.float32)


def _request(x: np.ndarray = ROW, *, model: str = "mlp", version: str = "", datatype: str = "FP32",
             shape: list[int] | None = None, raw: list[bytes] | None = None, name: str = "input",
             outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=list(x.shape) if shape is None else shape)
    request.raw_input_contents.extend([x.tobytes()] if raw is None else raw)
    for output in outputs:
        request.outputs.add(name=output)
    return request


def _typed(count: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([0.5] * count)
    return request


def _nan() -> np.ndarray:
    x = ROW.copy()
    x[0, 3] = np.nan
    return x


CASES = [
    ("unknown model", _request(model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    ("unknown version", _request(version="7"), grpc.StatusCode.NOT_FOUND, "version 7 is not loaded"),
    ("non-numeric version", _request(version="latest"), grpc.StatusCode.NOT_FOUND, "no version 'latest'"),
    ("wrong datatype", _request(ROW.astype(np.float64), datatype="FP64"), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'input': datatype FP64 does not match the model's FP32"),
    ("unknown datatype", _request(datatype="FP33"), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype 'FP33'"),
    ("wrong shape", _request(np.zeros((1, 63), np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'input': shape [1, 63] does not match the model's [-1, 64]"),
    ("wrong rank", _request(np.zeros((64,), np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'input': shape [64]"),
    ("wrong byte size", _request(raw=[ROW.tobytes()[:-4]]), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'input': expected 256 bytes for FP32 [1, 64], got 252"),
    ("negative dimension", _request(shape=[-1, 64]), grpc.StatusCode.INVALID_ARGUMENT, "negative dimension"),
    ("too many raw contents", _request(raw=[ROW.tobytes(), ROW.tobytes()]), grpc.StatusCode.INVALID_ARGUMENT,
     "raw_input_contents has 2 entries but the request has 1 inputs"),
    ("typed contents count", _typed(63), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'input': expected 64 values in contents.fp32_contents"),
    ("NaN rejected", _request(_nan()), grpc.StatusCode.INVALID_ARGUMENT, "input 'input' contains NaN or infinity"),
    ("batch over max", _request(np.zeros((65, 64), np.float32)), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "batch size 65 exceeds max_batch_size 64"),
    ("missing input", pb.ModelInferRequest(model_name="mlp"), grpc.StatusCode.INVALID_ARGUMENT,
     "missing input 'input'"),
    ("unknown input", _request(name="pixels"), grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'pixels'"),
    ("unknown output", _request(outputs=("nope",)), grpc.StatusCode.INVALID_ARGUMENT,
     "unknown requested output 'nope'"),
    ("message too large", _request(np.zeros((64, 1024), np.float32)), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import start_pseudoserve, write_classifier_repository

    tmp = tmp_path_factory.mktemp("errors")
    repo = write_classifier_repository(tmp / "models")
    process = start_pseudoserve(["--model-repository", str(repo), "--max-message-bytes", "131072"], workdir=tmp)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.mark.parametrize("label,request_,code,message", CASES, ids=[c[0] for c in CASES])
def test_bad_request(stub, label, request_, code, message) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request_, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details()


def test_server_still_serves_and_counts_failures(stub, server) -> None:
    for _, request_, _, _ in CASES:
        try:
            stub.ModelInfer(request_, timeout=30)
        except grpc.RpcError:
            pass
    response = stub.ModelInfer(_request(), timeout=30)
    assert response.model_version == "1" and len(response.raw_output_contents) == 1
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'pseudoserve_requests_total{model="mlp",outcome="invalid_argument",version="1"}' in metrics
    assert 'pseudoserve_requests_total{model="mlp",outcome="resource_exhausted",version="1"}' in metrics
    assert 'pseudoserve_requests_total{model="",outcome="not_found",version=""}' in metrics


def test_metadata_errors(stub) -> None:
    for call, request_ in ((stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
                           (stub.ModelConfig, pb.ModelConfigRequest(name="mlp", version="9")),
                           (stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope")),
                           (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="nope")),
                           (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="nope"))):
        with pytest.raises(grpc.RpcError) as info:
            call(request_, timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
        assert "nope" in info.value.details() or "version 9" in info.value.details()
