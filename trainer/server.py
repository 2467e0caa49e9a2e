"""Assembly of the `pseudoserve trainer` process: the SampleStore, a grpc.aio server with the
Collector and Trainer services plus grpc health and reflection, an HTTP server with /metrics
(from the injected CollectorRegistry) and the round reports under /reports/, the optional
self-training RoundRunner, SIGTERM/SIGINT handling and the ready file.

`TrainerProcess` is what tests start in-process (ports 0); `run(settings, ready_file)` is the
blocking entry point used by `trainer.cli_online.run_trainer`. The round runner is built lazily
(`trainer.online.build_round_runner(settings, store, registry)`) only when self-training is
enabled, so collector-only mode (`--no-self-training`) never imports the engine or torch.

Report pages: served on the metrics port under /reports/ unless `http_port` is set, in which
case a second HTTP server on that port serves them (and /metrics too); the ready file then adds
`"http_port"`. The store lives in one single-thread executor: its only writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from protos import collector_pb2, collector_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from trainer.collector import CollectorServicer
from trainer.control import RoundRunner, TrainerControlServicer
from trainer.metrics import trainer_metrics
from trainer.settings import TrainerSettings
from trainer.store import Retention, SampleStore

log = logging.getLogger(__name__)

COLLECTOR_SERVICE = collector_pb2.DESCRIPTOR.services_by_name["Collector"].full_name
TRAINER_SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
PROTECTED_METHODS = (f"/{TRAINER_SERVICE}/SubmitLabels", f"/{TRAINER_SERVICE}/TriggerRound",
                     f"/{COLLECTOR_SERVICE}/Stream")


class TrainerStartupError(RuntimeError):
    """The trainer cannot start (store refused, port taken, self-training unavailable)."""


def _handler_class(registry: CollectorRegistry, reports_dir: Path) -> type[BaseHTTPRequestHandler]:
    reports_root = reports_dir.resolve()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/reports" or path.startswith("/reports/"):
                self._report(path[len("/reports"):].lstrip("/"))
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /reports/\n")

        def _report(self, relative: str) -> None:
            target = (reports_root / relative).resolve()
            if target != reports_root and reports_root not in target.parents:
                return self._send(404, "text/plain; charset=utf-8", b"not found\n")
            if target.is_dir():
                if (target / "index.html").is_file():
                    target = target / "index.html"
                else:
                    names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
                    links = "".join(f'<li><a href="{n}">{n}</a></li>' for n in names)
                    body = f"<!doctype html><title>reports</title><ul>{links}</ul>".encode()
                    return self._send(200, "text/html; charset=utf-8", body)
            if not target.is_file():
                return self._send(404, "text/plain; charset=utf-8", b"not found\n")
            kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            self._send(200, kind, target.read_bytes())

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("http: " + format, *args)

    return Handler


def start_http_server(host: str, port: int, registry: CollectorRegistry, reports_dir: Path) -> ThreadingHTTPServer:
    """Serve /metrics and /reports/ from a daemon thread; returns the bound server."""
    server = ThreadingHTTPServer((host, port), _handler_class(registry, reports_dir))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), name=f"http-{server.server_address[1]}", daemon=True).start()
    return server


def write_ready_file(path: Path, content: dict[str, int]) -> None:
    """Write the ready file atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)


class TrainerProcess:
    """The trainer's servers around one SampleStore; `start()`, then `stop()`."""

    def __init__(self, settings: TrainerSettings, *, registry: CollectorRegistry | None = None,
                 round_runner: RoundRunner | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.round_runner = round_runner
        self.store: SampleStore | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self.http_port: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._http: list[ThreadingHTTPServer] = []

    async def start(self) -> None:
        s = self.settings
        trainer_metrics(self.registry)  # register every family before the first scrape
        retention = Retention(s.max_samples, s.max_bytes, s.max_age_seconds)
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(
            self._executor, lambda: SampleStore(s.store, retention=retention, registry=self.registry))
        if self.round_runner is None and s.self_training:
            self.round_runner = self._build_round_runner()
        interceptors = []
        if s.auth_token is not None:
            from service.security import bearer_token_interceptor

            interceptors.append(bearer_token_interceptor(s.auth_token.get_secret_value(), PROTECTED_METHODS))
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 0)])
        collector_pb2_grpc.add_CollectorServicer_to_server(CollectorServicer(self.store, self._executor), server)
        trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerControlServicer(
            self.store, self._executor, model_repository=s.model_repository, model_name=s.model_name,
            round_runner=self.round_runner), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (COLLECTOR_SERVICE, TRAINER_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        address = f"{s.host}:{s.grpc_port}"
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            from service.security import server_credentials

            self.grpc_port = server.add_secure_port(address, server_credentials(s.tls_cert_file, s.tls_key_file))
        else:
            self.grpc_port = server.add_insecure_port(address)
        if not self.grpc_port:
            raise TrainerStartupError(f"cannot bind the trainer's gRPC port {address}")
        try:
            metrics = start_http_server(s.host, s.metrics_port, self.registry, s.reports_dir)
            self._http.append(metrics)
            self.metrics_port = metrics.server_address[1]
            if s.http_port is not None:
                reports = start_http_server(s.host, s.http_port, self.registry, s.reports_dir)
                self._http.append(reports)
                self.http_port = reports.server_address[1]
        except OSError as e:
            raise TrainerStartupError(f"cannot bind the trainer's HTTP port on {s.host}: {e.strerror or e}") from e
        await server.start()
        self._server = server
        for name in ("", COLLECTOR_SERVICE, TRAINER_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.round_runner is not None:
            await self.round_runner.start()
        log.info("trainer serving gRPC on %s:%d, metrics on %d (store %s)", s.host, self.grpc_port,
                 self.metrics_port, s.store)

    def _build_round_runner(self) -> RoundRunner:
        try:
            from trainer.online import build_round_runner
        except ImportError as e:
            raise TrainerStartupError(f"self-training is unavailable ({e}); start with --no-self-training "
                                      "for a collector-only trainer") from e
        return build_round_runner(self.settings, self.store, self.registry, self._executor)

    def ready_content(self) -> dict[str, int]:
        content = {"pid": os.getpid(), "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        if self.http_port is not None:
            content["http_port"] = self.http_port
        return content

    async def stop(self, grace: float = 5.0) -> None:
        """Stop rounds, drain the gRPC server (in-flight batches finish and are acked), close the store."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.round_runner is not None:
            try:
                await self.round_runner.stop()
            except Exception:
                log.exception("stopping the round runner failed")
        if self._server is not None:
            await self._server.stop(grace)
        for http in self._http:
            http.shutdown()
            http.server_close()
        self._http.clear()
        if self.store is not None:
            store, self.store = self.store, None
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)


async def serve(settings: TrainerSettings, ready_file: Path | None = None) -> int:
    """Run the trainer until SIGTERM/SIGINT; returns the exit code."""
    process = TrainerProcess(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await process.start()
        if ready_file is not None:
            write_ready_file(ready_file, process.ready_content())
        await stop.wait()
        log.info("trainer shutting down")
    finally:
        await process.stop()
    return 0
