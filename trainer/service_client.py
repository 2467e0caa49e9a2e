"""The trainer's client of the inference service: which version is served, load a new one, and
confirm the service really answers with it.

Called by `trainer.online.OnlineTrainer` after a student passed the holdout gate and was published
to the repository. Uses our own `inference` stubs (this process never imports tritonclient).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import numpy as np

from protos import inference_pb2, inference_pb2_grpc
from service.security import auth_metadata, channel_credentials
from service.tensors import decode_raw, encode_raw

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """The service refused or failed a request the trainer made; the message says which and why."""


class ServiceClient:
    """Thin async wrapper over the service's GRPCInferenceService for the trainer's needs."""

    def __init__(self, address: str, *, token: str | None = None, ca_file: Path | None = None,
                 timeout: float = 60.0) -> None:
        self._address = address
        self._token = token
        self._ca_file = ca_file
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: inference_pb2_grpc.GRPCInferenceServiceStub | None = None

    def _rpc(self) -> inference_pb2_grpc.GRPCInferenceServiceStub:
        if self._stub is None:  # created lazily, inside the running loop
            if self._ca_file is not None:
                self._channel = grpc.aio.secure_channel(self._address, channel_credentials(self._ca_file))
            else:
                self._channel = grpc.aio.insecure_channel(self._address)
            self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    def _metadata(self) -> list[tuple[str, str]] | None:
        return auth_metadata(self._token) if self._token else None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def ready_versions(self, model: str, *, timeout: float | None = None) -> list[str]:
        """Versions of `model` the service reports READY, oldest first. Waits for the channel to be
        ready (the service may be starting) up to the timeout."""
        try:
            index = await self._rpc().RepositoryIndex(inference_pb2.RepositoryIndexRequest(ready=True),
                                                      timeout=timeout or self._timeout, metadata=self._metadata(),
                                                      wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise ServiceError(f"RepositoryIndex on {self._address} failed: {exc.code().name}: {exc.details()}") from exc
        versions = [m.version for m in index.models if m.name == model and m.state == "READY" and m.version]
        return sorted(versions, key=int)

    async def served_version(self, model: str, *, timeout: float | None = None) -> str | None:
        """The version a request without an explicit version gets: the newest READY one."""
        versions = await self.ready_versions(model, timeout=timeout)
        return versions[-1] if versions else None

    async def load(self, model: str) -> None:
        """RepositoryModelLoad: the service loads and warms new versions, then swaps atomically."""
        try:
            await self._rpc().RepositoryModelLoad(inference_pb2.RepositoryModelLoadRequest(model_name=model),
                                                  timeout=self._timeout, metadata=self._metadata(),
                                                  wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise ServiceError(f"RepositoryModelLoad({model}) failed: {exc.code().name}: {exc.details()}") from exc

    async def infer(self, model: str, X: np.ndarray, *, version: str = "") -> tuple[np.ndarray, str]:
        """One uncaptured request (parameter capture=false): (probabilities, version that answered)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        request = inference_pb2.ModelInferRequest(model_name=model, model_version=version)
        request.parameters["capture"].bool_param = False
        request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
        request.raw_input_contents.append(encode_raw(X))
        try:
            reply = await self._rpc().ModelInfer(request, timeout=self._timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise ServiceError(f"ModelInfer({model}) failed: {exc.code().name}: {exc.details()}") from exc
        names = [o.name for o in reply.outputs]
        i = names.index("probabilities") if "probabilities" in names else 0
        out = reply.outputs[i]
        return decode_raw(reply.raw_output_contents[i], out.datatype, list(out.shape)), reply.model_version

    async def confirm_serving(self, model: str, version: str, sample: np.ndarray, expected: np.ndarray,
                              *, timeout: float = 60.0, atol: float = 1e-4) -> None:
        """Wait until a default-version request is answered by `version` with the expected output."""
        deadline = asyncio.get_running_loop().time() + timeout
        last = "no answer"
        while asyncio.get_running_loop().time() < deadline:
            try:
                proba, served = await self.infer(model, sample)
                if served == version:
                    diff = float(np.max(np.abs(proba - expected)))
                    if diff <= atol:
                        return
                    raise ServiceError(f"version {version} is served but its output differs from the exported model by {diff:.2e}")
                last = f"requests are still answered by version {served}"
            except ServiceError as exc:
                if "differs" in str(exc):
                    raise
                last = str(exc)
            await asyncio.sleep(0.2)
        raise ServiceError(f"the service did not start serving {model} version {version} within {timeout:.0f} s: {last}")
