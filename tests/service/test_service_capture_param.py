"""The `capture` request parameter: absent or true = captured, false = not, anything else is an
INVALID_ARGUMENT naming the parameter."""

from __future__ import annotations

import numpy as np
import pytest

from protos import inference_pb2 as pb
from service.converters import infer_request_from_proto
from service.errors import InvalidArgument


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.zeros((1, 2), np.float32).tobytes())
    return request


def test_captured_by_default() -> None:
    assert infer_request_from_proto(_request()).capture is True


@pytest.mark.parametrize("value", [True, False])
def test_bool_parameter_sets_capture(value: bool) -> None:
    request = _request()
    request.parameters["capture"].bool_param = value
    assert infer_request_from_proto(request).capture is value


def test_non_bool_capture_parameter_is_refused() -> None:
    request = _request()
    request.parameters["capture"].string_param = "no"
    with pytest.raises(InvalidArgument, match=r"parameters\['capture'\]"):
        infer_request_from_proto(request)
