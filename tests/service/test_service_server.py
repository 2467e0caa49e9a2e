"""The in-process server through our own stubs: error mapping in one place (ServingError codes,
unknown exceptions as INTERNAL "internal error" logged in full), stream errors, bearer token and
TLS, metrics exposition, and the DataPlane called without gRPC."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest

from protos import inference_pb2 as pb
from protos import inference_pb2_grpc
from service import security
from service.domain import InferInput, InferRequest
from service.errors import ModelNotFound
from tests.fixtures.onnx_models import write_version
from tests.fixtures.servers import make_settings

ROW = np.random.default_rng(0).random((1, 64), dtype=np.float32)


def _request(x: np.ndarray = ROW, model: str = "mlp") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


async def test_unexpected_exception_is_internal_and_logged(served, monkeypatch, caplog) -> None:
    server, stub = served
    mv = server.manager.get("mlp")

    def broken(index, feeds):  # a fault real onnxruntime cannot be made to produce on demand
        raise RuntimeError("secret detail of the failure")

    monkeypatch.setattr(mv, "_run", broken)
    monkeypatch.setattr(mv.batcher, "_run_fn", broken)
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(_request())
    assert info.value.code() == grpc.StatusCode.INTERNAL and info.value.details() == "internal error"
    assert "secret detail of the failure" in caplog.text and "Traceback" in caplog.text
    assert mv.metrics.outcomes.get("internal") == 1


async def test_serving_errors_keep_their_code(served) -> None:
    _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(_request(model="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(_request(np.zeros((1, 65), np.float32)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_reports_errors_and_continues(served) -> None:
    _, stub = served
    requests = [_request(), _request(model="nope"), _request(np.full((2, 64), 0.5, np.float32))]

    async def gen():
        for r in requests:
            yield r

    responses = [r async for r in stub.ModelStreamInfer(gen())]
    assert [bool(r.error_message) for r in responses] == [False, True, False]
    assert "unknown model 'nope'" in responses[1].error_message
    assert list(responses[2].infer_response.outputs[0].shape) == [2, 10]


async def test_dataplane_without_grpc(served) -> None:
    server, _ = served
    dp = server.dataplane
    response = await dp.infer(InferRequest("mlp", "", "", [InferInput("input", "FP32", (1, 64), ROW)]))
    # like Triton, the response carries the client's id; one is generated only for capture
    assert response.model_version == "1" and response.id == ""
    response = await dp.infer(InferRequest("mlp", "", "r-7", [InferInput("input", "FP32", (1, 64), ROW)]))
    assert response.id == "r-7"
    assert response.outputs[0].data.shape == (1, 10)
    with pytest.raises(ModelNotFound):
        await dp.infer(InferRequest("nope", "", "", []))


async def test_metrics_exposition(served) -> None:
    server, stub = served
    for _ in range(3):
        await stub.ModelInfer(_request())
    text = generate_latest(server.registry).decode()
    assert 'pseudoserve_requests_total{model="mlp",outcome="success",version="1"} 3.0' in text
    assert 'pseudoserve_request_duration_seconds_count{model="mlp",version="1"} 3.0' in text
    assert 'pseudoserve_batch_size_bucket{le="1.0",model="mlp",version="1"} 3.0' in text
    assert 'pseudoserve_prediction_confidence_count{model="mlp",version="1"} 3.0' in text
    assert 'pseudoserve_loaded_versions{model="mlp"} 1.0' in text
    assert 'pseudoserve_inflight_requests{model="mlp"} 0.0' in text
    assert 'pseudoserve_model_info{model="mlp",provider="CPUExecutionProvider",version="1"} 1.0' in text
    predicted = [line for line in text.splitlines() if line.startswith("pseudoserve_predicted_class_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in predicted) == 3.0
    assert all('class="class_' in line for line in predicted)  # names from the ONNX metadata


async def test_logits_output_gets_softmax_for_the_confidence_metric(repo: Path, start_server) -> None:
    write_version(repo, "logits", 1, softmax=False)
    server, stub = await start_server(make_settings(repo))
    await stub.ModelInfer(_request(model="logits"))
    (m,) = [m for m in server.metrics.versions if m.model == "logits"]
    m.fold_predictions()
    m.confidence.fold()
    assert m.confidence.counts.sum() == 1 and 0.1 <= m.confidence.total <= 1.0


async def test_bearer_token_on_repository_control(repo: Path, start_server) -> None:
    _, stub = await start_server(make_settings(repo, auth_token="tok"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"),
                                         metadata=security.auth_metadata("wrong"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "invalid bearer token" in info.value.details()
    await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), metadata=security.auth_metadata("tok"))
    assert (await stub.ModelInfer(_request())).model_version == "1"  # inference is not protected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
async def test_tls(repo: Path, start_server, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(subprocess.run, ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server, _ = await start_server(make_settings(repo, tls_cert_file=cert, tls_key_file=key))
    async with grpc.aio.secure_channel(f"localhost:{server.grpc_port}", security.channel_credentials(cert)) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
