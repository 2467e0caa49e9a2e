"""`InferenceServer`: builds and runs one `pseudoserve serve` process.

Start-up: metrics registry, executor, repository, `ModelManager` (loads every model), DataPlane,
gRPC server (inference + health + reflection, bearer-token interceptor on the repository
control RPCs when a token is set, TLS when a certificate is set, message size limits) bound on
`grpc_port`, Prometheus on `metrics_port`, capture (only when a trainer address is set), polling,
and finally the ready file. Shutdown (SIGTERM/SIGINT): readiness and health go NOT_SERVING,
in-flight requests finish within `shutdown_grace_seconds`, capture flushes, sessions are released.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from protos import inference_pb2_grpc
from service import security
from service.dataplane import DataPlane
from service.health import INFERENCE_SERVICE, HealthReporter
from service.manager import ModelManager
from service.metrics import ServiceMetrics
from service.repository import ModelRepository
from service.servicer import InferenceServicer
from service.settings import ServerSettings

log = logging.getLogger(__name__)

PROTECTED_METHODS = (f"/{INFERENCE_SERVICE}/RepositoryModelLoad", f"/{INFERENCE_SERVICE}/RepositoryModelUnload")


def write_ready_file(path: Path, payload: dict) -> None:
    """Write JSON atomically (temp file + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


class InferenceServer:
    """One server process's parts, started and stopped in order."""

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._httpd = None
        self.capture = None

    async def start(self) -> None:
        from pseudoserve import __version__

        s = self.settings
        self.metrics = ServiceMetrics(self.registry)
        self.executor = ThreadPoolExecutor(max_workers=s.compute_threads, thread_name_prefix="onnxruntime")
        self.manager = ModelManager(ModelRepository(s.model_repository), s, self.metrics, self.executor)
        self.health = HealthServicer()
        self.dataplane = DataPlane(self.manager, self.metrics, version=__version__,
                                   on_models_changed=self._sync_health)
        self.reporter = HealthReporter(self.health, lambda: self.dataplane.ready, self.manager.model_names,
                                       self.manager.is_ready)
        await self.reporter.sync()  # NOT_SERVING until the models are loaded

        interceptors = []
        if s.auth_token is not None:
            interceptors.append(security.bearer_token_interceptor(s.auth_token.get_secret_value(), PROTECTED_METHODS))
        options = [("grpc.max_receive_message_length", s.max_message_bytes),
                   ("grpc.max_send_message_length", s.max_message_bytes)]
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.dataplane), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server)
        address = f"{s.host}:{s.grpc_port}"
        if s.tls_cert_file is not None or s.tls_key_file is not None:
            if s.tls_cert_file is None or s.tls_key_file is None:
                raise ValueError("TLS needs both tls_cert_file and tls_key_file")
            self.grpc_port = self.server.add_secure_port(address, security.server_credentials(s.tls_cert_file, s.tls_key_file))
        else:
            self.grpc_port = self.server.add_insecure_port(address)
        if not self.grpc_port:
            raise OSError(f"cannot bind gRPC port {address}")
        self._httpd, _ = start_http_server(s.metrics_port, addr=s.host, registry=self.registry)
        self.metrics_port = self._httpd.server_port

        await self.manager.load_all()
        await self.server.start()
        if s.trainer_address:
            from service.capture import (
                Capture,  # lazily: only a server with a trainer needs it
            )

            self.capture = Capture.from_settings(s, self.registry)
            if self.capture is not None:
                self.dataplane.capture = self.capture
                await self.capture.start()
        if s.repository_poll_seconds > 0:
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._poll(s.repository_poll_seconds)))
        self.dataplane.ready = True
        await self.reporter.sync()
        log.info("serving %s on %s:%d (metrics on port %d)", s.model_repository, s.host, self.grpc_port,
                 self.metrics_port)
        if s.ready_file is not None:
            write_ready_file(s.ready_file, {"pid": os.getpid(), "grpc_port": self.grpc_port,
                                            "metrics_port": self.metrics_port})

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.manager.poll_once()
            except Exception:
                log.exception("repository poll failed")
            await self._sync_health()

    async def _sync_health(self) -> None:
        if not self._stopping.is_set():
            await self.reporter.sync()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        """Serve until SIGTERM/SIGINT (or `request_stop`), then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        s = self.settings
        log.info("shutting down: draining in-flight requests (grace %.1f s)", s.shutdown_grace_seconds)
        self._stopping.set()
        self.dataplane.ready = False
        await self.reporter.shutdown()
        for task in self._tasks:
            task.cancel()
        await self.server.stop(s.shutdown_grace_seconds)
        if self.capture is not None:
            try:
                await self.capture.stop(s.shutdown_grace_seconds)
            except Exception:
                log.exception("capture did not stop cleanly")
        await self.manager.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
