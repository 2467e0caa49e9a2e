"""Every Open Inference Protocol RPC of a real `pseudoserve serve` process, driven by tritonclient
(grpc and grpc.aio), with outputs compared to an in-process onnxruntime run."""

from __future__ import annotations

import queue
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from conftest import reference_outputs, write_classifier_repository


@pytest.fixture
def server(pseudoserve, mlp_repo):
    return pseudoserve(["--model-repository", str(mlp_repo)])


def _inputs(x: np.ndarray, client=grpcclient):
    tensor = client.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def test_server_and_model_rpcs(server) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "2")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "pseudoserve" and "model_repository" in meta["extensions"]
    model = client.get_model_metadata("mlp", as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}]
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == ["64"]
    assert config["parameters"]["execution_provider"]["string_value"] == "CPUExecutionProvider"
    index = client.get_model_repository_index(as_json=True)
    assert index["models"] == [{"name": "mlp", "version": "1", "state": "READY"}]


def test_infer_matches_onnxruntime_and_statistics(server) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    x = np.random.default_rng(1).random((5, 64), dtype=np.float32)
    result = client.infer("mlp", _inputs(x), request_id="req-1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference_outputs(x)[0], rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response.id == "req-1" and response.model_version == "1"
    # like Triton: no id from the client, none back (capture generates one: test_capture_e2e)
    assert client.infer("mlp", _inputs(x[:1])).get_response().id == ""
    stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == "2"
    assert stats["inference_count"] == "6"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'pseudoserve_requests_total{model="mlp",outcome="success",version="1"} 2.0' in metrics
    assert 'pseudoserve_model_info{model="mlp",provider="CPUExecutionProvider",version="1"} 1.0' in metrics
    assert 'pseudoserve_prediction_confidence_count{model="mlp",version="1"} 6.0' in metrics
    assert "pseudoserve_predicted_class_total" in metrics and "pseudoserve_batch_size_bucket" in metrics


def test_streaming_in_order_with_errors(server) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    xs = [np.random.default_rng(i).random((1, 64), dtype=np.float32) for i in range(6)]
    try:
        for i, x in enumerate(xs):
            client.async_stream_infer("mlp", _inputs(x), request_id=f"s{i}")
        client.async_stream_infer("nope", _inputs(xs[0]), request_id="bad")
        got = [results.get(timeout=30) for _ in range(len(xs) + 1)]
    finally:
        client.stop_stream()
    for i, (result, error) in enumerate(got[:-1]):
        assert error is None
        assert result.get_response().id == f"s{i}"
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference_outputs(xs[i])[0], rtol=1e-5, atol=1e-6)
    assert got[-1][0] is None and "unknown model 'nope'" in str(got[-1][1])


async def test_aio_client_and_repository_control(pseudoserve, tmp_path) -> None:
    repo = write_classifier_repository(tmp_path / "models")
    server = pseudoserve(["--model-repository", str(repo)])
    client = aioclient.InferenceServerClient(server.url)
    try:
        assert await client.is_server_ready()
        x = np.random.default_rng(2).random((2, 64), dtype=np.float32)
        result = await client.infer("mlp", _inputs(x, aioclient))
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference_outputs(x)[0], rtol=1e-5, atol=1e-6)
        await client.unload_model("mlp")
        assert not await client.is_model_ready("mlp")
        index = await client.get_model_repository_index(as_json=True)
        assert index["models"][0]["state"] == "UNAVAILABLE"
        write_classifier_repository(repo, version=2, bias_shift=1.0)
        await client.load_model("mlp")
        assert await client.is_model_ready("mlp", "2") and not await client.is_model_ready("mlp", "1")
        result = await client.infer("mlp", _inputs(x, aioclient))
        assert result.get_response().model_version == "2"
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference_outputs(x, bias_shift=1.0)[0],
                                   rtol=1e-5, atol=1e-6)
    finally:
        await client.close()
