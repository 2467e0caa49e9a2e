"""grpc.health.v1 (grpcio-health-checking's asyncio servicer) mapped to readiness: the overall
service "" and "inference.GRPCInferenceService" are SERVING while the server is ready, and each
model name is SERVING while that model has a ready version. Kubernetes gRPC probes call Check;
Watch streams the same statuses. `sync()` is called after every load, unload and poll change and
on shutdown (NOT_SERVING for all)."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from protos import inference_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class HealthReporter:
    """Keeps a HealthServicer's statuses equal to the server's and models' readiness."""

    def __init__(self, servicer: HealthServicer, is_ready, model_names, model_ready) -> None:
        self.servicer = servicer
        self._is_ready = is_ready
        self._model_names = model_names
        self._model_ready = model_ready
        self._lock = asyncio.Lock()
        self._known: set[str] = set()

    async def sync(self) -> None:
        async with self._lock:
            ready = self._is_ready()
            overall = SERVING if ready else NOT_SERVING
            await self.servicer.set("", overall)
            await self.servicer.set(INFERENCE_SERVICE, overall)
            names = set(self._model_names())
            for name in sorted(names | self._known):
                await self.servicer.set(name, SERVING if ready and name in names and self._model_ready(name) else NOT_SERVING)
            self._known |= names

    async def shutdown(self) -> None:
        """Everything NOT_SERVING, and no later change (grpcio's graceful-shutdown mode)."""
        async with self._lock:
            await self.servicer.enter_graceful_shutdown()
