"""`service.runtime.request_runner`: the request path's direct call into the onnxruntime session."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from service import runtime
from tests.fixtures.onnx_models import mlp_model


def _session() -> ort.InferenceSession:
    return ort.InferenceSession(mlp_model(extra_output=True).SerializeToString(), providers=["CPUExecutionProvider"])


def test_request_runner_computes_what_the_public_run_computes() -> None:
    session = _session()
    x = np.random.default_rng(1).random((5, 64), dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    got = runtime.request_runner(session)(names, {"input": x})
    expected = session.run(names, {"input": x})
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    # output order follows the names asked for
    swapped = runtime.request_runner(session)(names[::-1], {"input": x})
    np.testing.assert_array_equal(swapped[0], expected[1])


def test_request_runner_uses_the_public_run_without_the_binding() -> None:
    calls = []

    class Wrapper:  # an onnxruntime build whose session has no `_sess` binding
        def run(self, names, feeds):
            calls.append(names)
            return ["ok"]

    wrapper = Wrapper()
    assert runtime.request_runner(wrapper)(["probabilities"], {}) == ["ok"]
    assert calls == [["probabilities"]]


def test_an_execution_provider_failure_goes_through_the_public_run() -> None:
    # a provider failing at run time cannot be produced on a CPU-only machine: the binding is faked
    class Binding:
        def run(self, names, feeds, options):
            raise runtime._EP_FAIL("CUDA failure")

    class Session:
        _sess = Binding()

        def run(self, names, feeds):  # onnxruntime's public run owns the provider fallback
            return ["from the fallback"]

    assert runtime.request_runner(Session())(["probabilities"], {}) == ["from the fallback"]
