"""Transport-free request and response types of the DataPlane. `service.converters` builds them
from protobuf and back; tests and other transports can build them directly."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class InferInput:
    """One input tensor as the client declared it, decoded (`raw` keeps the bytes as received)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    raw: bytes | None = None


@dataclass(slots=True)
class InferRequest:
    """An inference request; `outputs` empty means every model output."""

    model_name: str
    model_version: str
    id: str
    inputs: list[InferInput]
    outputs: list[str] = field(default_factory=list)
    raw_outputs: bool = True
    capture: bool = True  # False: the request parameter `capture: false` opts out of capture


@dataclass(slots=True)
class InferOutput:
    """One output tensor of a response."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(slots=True)
class InferResponse:
    """An inference response; `model_version` is the version that computed it."""

    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]
    raw_outputs: bool = True


@dataclass(slots=True)
class TensorSpec:
    """An input or output as the model serves it; `shape` includes the batch dimension (-1)."""

    name: str
    datatype: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(slots=True)
class ModelIndexEntry:
    """One row of RepositoryIndex."""

    name: str
    version: str
    state: str
    reason: str = ""
