"""The one exception hierarchy of the service. Each class carries the gRPC status code it maps to;
`service.servicer` turns them into `context.abort(code, message)` in one place, and any other
exception becomes INTERNAL "internal error" (logged in full on the server, never sent).

Messages are written for the client: they name the model, version, input or field at fault and
what was expected. `InvalidArgument` is also a `ValueError`, so library users (the trainer calls
`service.tensors.decode_raw`) can catch it without importing grpc.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base class: an error whose message is safe to send to the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def outcome(self) -> str:
        """The `outcome` label of `pseudoserve_requests_total` for this error."""
        return self.code.name.lower()


class InvalidArgument(ServingError, ValueError):
    """The request is malformed: bad shape, datatype, byte size, NaN policy, unknown output."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    """No such model or version in the repository."""

    code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(ServingError):
    """The model exists but has no ready version (loading, failed or unloaded)."""

    code = grpc.StatusCode.UNAVAILABLE


class ServerNotReady(ServingError):
    """The server is starting or draining for shutdown."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServingError):
    """A request exceeds a configured limit (batch size, message size)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelLoadError(ServingError):
    """A model version could not be loaded or failed warm-up; the serving version is kept."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ConfigError(ModelLoadError):
    """A config.pbtxt is invalid or does not match the ONNX graph."""
