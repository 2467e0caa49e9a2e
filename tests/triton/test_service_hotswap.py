"""Zero-downtime hot-swap: versions 1 -> 2 -> 3 loaded under concurrent traffic with no failed
request, every response carrying (and matching the outputs of) the version that computed it; and
broken versions (corrupt file, NaN warm-up output) that never replace the serving one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import reference_outputs, write_classifier_repository
from tritonclient.utils import InferenceServerException

X = np.random.default_rng(3).random((1, 64), dtype=np.float32)
SHIFTS = {1: 0.0, 2: 1.0, 3: 2.0}  # versions differ by their last-layer bias


def _infer(client: grpcclient.InferenceServerClient, x: np.ndarray = X):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("mlp", [tensor], client_timeout=30)


@pytest.mark.slow
def test_versions_1_2_3_under_concurrent_load(pseudoserve, tmp_path) -> None:
    repo = write_classifier_repository(tmp_path / "models", version=1, bias_shift=SHIFTS[1])
    server = pseudoserve(["--model-repository", str(repo)])
    expected = {v: reference_outputs(X, bias_shift=s)[0] for v, s in SHIFTS.items()}
    stop = threading.Event()
    seen: list[list[tuple[str, np.ndarray]]] = [[] for _ in range(4)]
    failures: list[BaseException] = []

    def client_loop(out: list) -> None:
        client = grpcclient.InferenceServerClient(server.url)
        try:
            while not stop.is_set():
                result = _infer(client)
                out.append((result.get_response().model_version, result.as_numpy("probabilities")))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    control = grpcclient.InferenceServerClient(server.url)
    try:
        for version in (2, 3):
            while sum(map(len, seen)) < 40 * (version - 1) and not failures:  # traffic on the old version
                threading.Event().wait(0.01)
            write_classifier_repository(repo, version=version, bias_shift=SHIFTS[version])
            control.load_model("mlp")
            # the swap is complete when load_model returns: the next request gets the new version
            assert _infer(control).get_response().model_version == str(version)
        while sum(map(len, seen)) < 120 and not failures:
            threading.Event().wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:3]
    versions_seen = set()
    for out in seen:
        order = [int(v) for v, _ in out]
        assert order == sorted(order), "a client saw an older version after a newer one"
        for version, probabilities in out:
            versions_seen.add(version)
            np.testing.assert_allclose(probabilities, expected[int(version)], rtol=1e-5, atol=1e-6)
    assert versions_seen == {"1", "2", "3"}
    index = control.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "mlp", "version": "3", "state": "READY"}]


def test_broken_versions_never_replace_the_serving_one(pseudoserve, tmp_path) -> None:
    repo = write_classifier_repository(tmp_path / "models", version=1)
    server = pseudoserve(["--model-repository", str(repo)])
    client = grpcclient.InferenceServerClient(server.url)
    expected = reference_outputs(X)[0]

    (repo / "mlp" / "2").mkdir()
    (repo / "mlp" / "2" / "model.onnx").write_bytes(b"this is not an onnx file")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("mlp")
    assert "version 2" in info.value.message() and "onnxruntime cannot load" in info.value.message()
    assert "still serving version(s) 1" in info.value.message()
    result = _infer(client)
    assert result.get_response().model_version == "1"
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)
    assert client.is_model_ready("mlp") and not client.is_model_ready("mlp", "2")
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mlp", "version": "1", "state": "READY"} in index
    assert any(m["version"] == "2" and m["state"] == "UNAVAILABLE" and "cannot load" in m["reason"] for m in index)

    write_classifier_repository(repo, version=3, nan_output=True)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("mlp")
    assert "version 3" in info.value.message()
    assert "warm-up output 'probabilities' is not finite" in info.value.message()
    assert _infer(client).get_response().model_version == "1"

    write_classifier_repository(repo, version=4, bias_shift=0.5)
    client.load_model("mlp")
    result = _infer(client)
    assert result.get_response().model_version == "4"
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference_outputs(X, bias_shift=0.5)[0],
                               rtol=1e-5, atol=1e-6)
    assert not client.is_model_ready("mlp", "1")
