"""`pseudoserve serve`: command-line flags on top of `ServerSettings` (flags override
`PSEUDOSERVE_*` environment variables), then `InferenceServer` until SIGTERM. Called by the
`pseudoserve` dispatcher (pseudoserve/cli.py); argument parsing imports nothing heavy."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path

# flag -> (ServerSettings field, type, help)
_FLAGS: dict[str, tuple[str, type, str]] = {
    "--model-repository": ("model_repository", Path, "model repository folder (Triton layout)"),
    "--host": ("host", str, "address to bind (default 127.0.0.1)"),
    "--grpc-port": ("grpc_port", int, "gRPC port (default 8001; 0 = any free port)"),
    "--metrics-port": ("metrics_port", int, "Prometheus /metrics port (default 8002; 0 = any free port)"),
    "--ready-file": ("ready_file", Path, 'write {"pid","grpc_port","metrics_port"} here once serving'),
    "--log-level": ("log_level", str, "DEBUG, INFO, WARNING, ERROR"),
    "--log-format": ("log_format", str, "text (default) or json (one JSON object per line)"),
    "--trainer-address": ("trainer_address", str, "host:port of the trainer's Collector (enables capture)"),
    "--capture-sampling": ("capture_sampling", float, "fraction of requests captured (0 disables)"),
    "--repository-poll-seconds": ("repository_poll_seconds", float, "poll the repository every N s (0 = off)"),
    "--shutdown-grace-seconds": ("shutdown_grace_seconds", float, "drain time on SIGTERM"),
    "--max-message-bytes": ("max_message_bytes", int, "largest gRPC message accepted or sent"),
    "--compute-threads": ("compute_threads", int, "threads running onnxruntime off the event loop"),
    "--inline-compute-max-us": ("inline_compute_max_us", float,
                                "run calls expected to take less than this on the event loop (0 = never)"),
    "--tls-cert-file": ("tls_cert_file", Path, "PEM certificate chain (enables TLS, with --tls-key-file)"),
    "--tls-key-file": ("tls_key_file", Path, "PEM private key"),
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `pseudoserve serve` flags; unset flags fall back to PSEUDOSERVE_* and then defaults."""
    for flag, (dest, kind, help_text) in _FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    parser.add_argument("--auth-token-file", type=Path, default=None,
                        help="file holding the bearer token required for RepositoryModelLoad/Unload "
                             "(or set PSEUDOSERVE_AUTH_TOKEN)")


def settings_from_args(args: argparse.Namespace):
    """ServerSettings from parsed flags over the environment."""
    from service.settings import ServerSettings

    overrides = {dest: getattr(args, dest) for dest, _, _ in _FLAGS.values() if getattr(args, dest, None) is not None}
    token_file = getattr(args, "auth_token_file", None)
    if token_file is not None:
        overrides["auth_token"] = Path(token_file).read_text(encoding="utf-8").strip()
    return ServerSettings(**overrides)


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM; 0 on a clean shutdown, 2 on bad settings."""
    from pydantic import ValidationError

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            print(f"pseudoserve serve: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pseudoserve serve: {exc}", file=sys.stderr)
        return 2
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if not settings.model_repository.is_dir():
        print(f"pseudoserve serve: model repository {settings.model_repository} is not a folder", file=sys.stderr)
        return 2
    from service.server import InferenceServer

    async def main() -> None:
        server = InferenceServer(settings)
        await server.start()
        # What start-up allocated (modules, sessions, descriptors) lives as long as the process:
        # keep it out of the cyclic collector's full passes, which otherwise walk all of it.
        gc.collect()
        gc.freeze()
        await server.run_until_stopped()

    asyncio.run(main())
    return 0


if __name__ == "__main__":  # `python -m service.cli ...` runs the server without the dispatcher
    _parser = argparse.ArgumentParser(prog="pseudoserve serve")
    add_serve_arguments(_parser)
    sys.exit(run_serve(_parser.parse_args()))
