"""Process-level behaviour of `pseudoserve serve`: SIGTERM drain, grpc.health.v1 Check/Watch,
server reflection, repository polling (renamed-in versions picked up, half-written ones ignored),
an existing Triton ONNX repository loading unchanged, and the bearer token on repository control."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import reference_outputs, write_classifier_repository
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.fixtures.onnx_models import mlp_model, slow_model, write_version

X = np.random.default_rng(5).random((1, 64), dtype=np.float32)


def _infer(client, model: str = "mlp", x: np.ndarray = X, name: str = "input", **kw):
    tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], client_timeout=60, **kw)


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _metric(server, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(pseudoserve, tmp_path) -> None:
    repo = tmp_path / "models"
    write_version(repo, "slow", 1, slow_model(depth=300), config="max_batch_size: 32\n")
    server = pseudoserve(["--model-repository", str(repo), "--shutdown-grace-seconds", "60"])
    results, errors = [], []

    def call() -> None:
        client = grpcclient.InferenceServerClient(server.url)
        try:
            results.append(_infer(client, "slow", np.ones((32, 1024), np.float32)).get_response().model_version)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    # every request must have reached the server before SIGTERM: one sent after it is (rightly) refused
    _wait_for(lambda: _metric(server, 'pseudoserve_inflight_requests{model="slow"}') >= len(threads),
              what="all requests in flight")
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    assert server.proc.wait(timeout=120) == 0
    assert not errors, errors
    assert results == ["1", "1", "1"]
    assert "shutting down" in server.log()


def test_health_check_and_watch(pseudoserve, mlp_repo) -> None:
    server = pseudoserve(["--model-repository", str(mlp_repo)])
    channel = grpc.insecure_channel(server.url)
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "inference.GRPCInferenceService", "mlp"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == serving
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service="mlp"), timeout=30)
    assert next(watch).status == serving
    grpcclient.InferenceServerClient(server.url).unload_model("mlp")
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    channel.close()


def test_reflection_lists_services(pseudoserve, mlp_repo) -> None:
    server = pseudoserve(["--model-repository", str(mlp_repo)])
    with grpc.insecure_channel(server.url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")]
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto


def test_polling_picks_up_renamed_versions_and_ignores_half_written(pseudoserve, tmp_path) -> None:
    repo = write_classifier_repository(tmp_path / "models", version=1)
    server = pseudoserve(["--model-repository", str(repo), "--repository-poll-seconds", "0.1"])
    client = grpcclient.InferenceServerClient(server.url)
    # half-written: marker present and a truncated file
    half = repo / "mlp" / "3"
    half.mkdir()
    (half / ".incomplete").touch()
    (half / "model.onnx").write_bytes(mlp_model(bias_shift=3.0).SerializeToString()[:1000])
    # the trainer's way: write a hidden temp folder, then rename it into place
    tmp = repo / "mlp" / ".tmp-abc"
    write_version(repo / "mlp", ".tmp-abc", 1, bias_shift=1.0)
    os.rename(tmp / "1", repo / "mlp" / "2")
    shutil.rmtree(tmp)
    _wait_for(lambda: client.is_model_ready("mlp", "2"), what="version 2 picked up by polling")
    result = _infer(client)
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference_outputs(X, bias_shift=1.0)[0],
                               rtol=1e-5, atol=1e-6)
    # a new model renamed in later proves further polls ran while version 3 stayed half-written
    write_version(tmp_path / "staging", "other", 1)
    os.rename(tmp_path / "staging" / "other", repo / "other")
    _wait_for(lambda: client.is_model_ready("other"), what="model 'other' picked up")
    assert not client.is_model_ready("mlp", "3")
    assert "version 3" not in str(client.get_model_repository_index(as_json=True))
    # completing version 3 (file written whole, marker removed) gets it served
    (half / "model.onnx").write_bytes(mlp_model(bias_shift=3.0).SerializeToString())
    (half / ".incomplete").unlink()
    _wait_for(lambda: client.is_model_ready("mlp", "3"), what="version 3 picked up once complete")


TRITON_CONFIG = """
name: "mlp"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 8
version_policy: { all { } }
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NONE
    dims: [ 64 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "labels.txt"
  }
]
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
}
optimization {
  graph: { level: 1 }
  execution_accelerators {
    cpu_execution_accelerator : [ { name : "openvino" } ]
  }
  input_pinned_memory: { enable: true }
}
model_warmup [
  {
    name: "zeros"
    batch_size: 2
    inputs {
      key: "input"
      value: { data_type: TYPE_FP32 dims: [ 64 ] zero_data: true }
    }
  }
]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
response_cache { enable: true }
"""


def test_existing_triton_repository_loads_unchanged(pseudoserve, tmp_path) -> None:
    repo = write_classifier_repository(tmp_path / "models", version=1, config=TRITON_CONFIG)
    write_classifier_repository(repo, version=2, bias_shift=1.0)
    (repo / "mlp" / "labels.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    server = pseudoserve(["--model-repository", str(repo)])
    client = grpcclient.InferenceServerClient(server.url)
    assert client.get_model_metadata("mlp", as_json=True)["versions"] == ["1", "2"]
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "100"
    assert config["instance_group"][0]["count"] == 2
    for version, shift in (("1", 0.0), ("2", 1.0)):
        result = _infer(client, x=np.repeat(X, 8, axis=0), model_version=version)
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference_outputs(np.repeat(X, 8, axis=0),
                                   bias_shift=shift)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(InferenceServerException) as info:
        _infer(client, x=np.repeat(X, 9, axis=0))
    assert "exceeds max_batch_size 8" in info.value.message()
    assert "skipped fields outside pseudoserve's subset" in server.log()


def test_bearer_token_guards_repository_control(pseudoserve, tmp_path) -> None:
    repo = write_classifier_repository(tmp_path / "models")
    server = pseudoserve(["--model-repository", str(repo)], env={"PSEUDOSERVE_AUTH_TOKEN": "s3cret"})
    client = grpcclient.InferenceServerClient(server.url)
    assert _infer(client).get_response().model_version == "1"  # inference needs no token
    for headers, fragment in ((None, "requires 'authorization: Bearer <token>'"),
                              ({"authorization": "Bearer wrong"}, "invalid bearer token")):
        with pytest.raises(InferenceServerException) as info:
            client.load_model("mlp", headers=headers)
        assert info.value.status() == "StatusCode.UNAUTHENTICATED" and fragment in info.value.message()
    client.load_model("mlp", headers={"authorization": "Bearer s3cret"})
    client.unload_model("mlp", headers={"authorization": "Bearer s3cret"})
    assert not client.is_model_ready("mlp")
