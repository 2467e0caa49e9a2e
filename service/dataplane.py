"""`DataPlane`: the transport-agnostic core of the server. The gRPC servicer converts protobuf to
`service.domain` types, calls these methods and converts back; tests can call them directly.

The inference path (`infer`) resolves the version, holds it for the request's lifetime (so a
hot-swap retires it only after), validates inputs against that version, runs the batcher,
records metrics and hands the result to capture (`offer_served` never blocks). No per-request
logging, no pydantic, no copies beyond the decode/encode the protocol needs.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Awaitable, Callable

from protos import model_config_pb2 as mc
from service.domain import (
    InferOutput,
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    TensorSpec,
)
from service.errors import ServerNotReady, ServingError
from service.manager import ModelManager
from service.metrics import ServiceMetrics, VersionMetrics
from service.model import tensor_spec

SERVER_NAME = "pseudoserve"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "schedule_policy",
              "binary_tensor_data", "health", "reflection"]


class DataPlane:
    """Server and model operations of the Open Inference Protocol, without transport."""

    def __init__(self, manager: ModelManager, metrics: ServiceMetrics, *, version: str,
                 capture: object | None = None,
                 on_models_changed: Callable[[], Awaitable[None]] | None = None) -> None:
        self.manager = manager
        self._metrics = metrics
        self._version = version
        self.capture = capture
        self._on_models_changed = on_models_changed
        self.ready = False
        self._perf_counter = time.perf_counter
        # Generated request ids: a random per-process prefix and a decimal counter (unique across
        # restarts with overwhelming probability; a uuid4 per request costs ~10x more, and a
        # formatted counter such as `:016x` ~2x more: docs/benchmarks.md section 2, session 16).
        self._id_prefix = uuid.uuid4().hex[:16] + "-"
        self._id_counter = itertools.count(1)

    # --- server -------------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def server_metadata(self) -> tuple[str, str, list[str]]:
        return SERVER_NAME, self._version, EXTENSIONS

    def model_ready(self, name: str, version: str) -> bool:
        return self.ready and self.manager.is_ready(name, version)

    # --- models -------------------------------------------------------------------------------
    def model_metadata(self, name: str, version: str) -> tuple[list[str], str, list[TensorSpec], list[TensorSpec]]:
        """(versions, platform, inputs, outputs) of the chosen version."""
        mv = self.manager.get(name, version)
        versions = [v.version_str for v in self.manager.ready_versions(name)]
        batch = mv.config.max_batch_size > 0
        inputs = list(mv.inputs.values())
        outputs = [tensor_spec(o.name, o.data_type, o.dims, batch) for o in mv.config.output]
        return versions, mv.config.platform, inputs, outputs

    def model_config(self, name: str, version: str) -> mc.ModelConfig:
        return self.manager.get(name, version).config

    def statistics(self, name: str, version: str) -> list[VersionMetrics]:
        if name:
            if version:
                return [self.manager.get(name, version).metrics]
            return [mv.metrics for mv in self.manager.ready_versions(name)]
        return [mv.metrics for n in self.manager.model_names() for mv in self.manager.ready_versions(n)]

    def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]:
        return self.manager.index(ready_only)

    async def load(self, name: str) -> None:
        try:
            await self.manager.load(name)
        finally:
            if self._on_models_changed is not None:
                await self._on_models_changed()

    async def unload(self, name: str) -> None:
        try:
            await self.manager.unload(name)
        finally:
            if self._on_models_changed is not None:
                await self._on_models_changed()

    # --- inference ----------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        start = self._perf_counter()
        name = request.model_name
        try:
            if not self.ready:
                raise ServerNotReady("server is not ready (starting up or shutting down)")
            mv = self.manager.get(name, request.model_version)
        except ServingError as exc:
            known = name in self.manager.model_names()
            self._metrics.count_failure(name if known else "", exc.outcome)
            raise
        metrics = mv.metrics
        mv.inflight += 1
        try:
            feeds, rows = mv.validate(request.inputs)
            positions = mv.output_positions(request.outputs) if request.outputs else None
            computed, queue_s = await mv.batcher.submit(feeds, rows)
        except ServingError as exc:
            metrics.request_failed(exc.outcome, self._perf_counter() - start)
            raise
        except BaseException:
            metrics.request_failed("internal", self._perf_counter() - start)
            raise
        finally:
            mv.release()
        specs = mv.outputs
        if positions is None:
            outputs = [InferOutput(s.name, s.datatype, a) for s, a in zip(specs, computed)]
        else:
            outputs = [InferOutput(specs[i].name, specs[i].datatype, computed[i]) for i in positions]
        request_id = request.id
        capture = self.capture
        if capture is not None and request.capture:
            if not request_id:  # the sample's key in the trainer's store (SubmitLabels by id)
                request_id = f"{self._id_prefix}{next(self._id_counter)}"
            capture.offer_served(request_id, mv, request.inputs, computed, rows)
        metrics.request_succeeded(rows, self._perf_counter() - start, queue_s)
        return InferResponse(name, mv.version_str, request_id, outputs, request.raw_outputs)
