"""End-to-end in-process checks of the inference path through our own stubs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from protos import inference_pb2 as pb
from tests.fixtures.onnx_models import mlp_model


def _request(x: np.ndarray, **kw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="mlp", **kw)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    return req


async def test_raw_infer_matches_onnxruntime(served) -> None:
    _, stub = served
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    response = await stub.ModelInfer(_request(x, id="abc"))
    assert response.id == "abc" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["probabilities"]
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(3, 10)
    expected = ort.InferenceSession(mlp_model().SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
