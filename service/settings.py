"""Typed server settings from the environment (prefix `PSEUDOSERVE_`) and the command line.

`ServerSettings` is built once in `service.cli.run_serve` (CLI flags override the environment)
and passed explicitly to everything that needs it; nothing reads the environment at import.
Per-model settings live in each model's config.pbtxt (see `service.config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """Settings of one `pseudoserve serve` process."""

    model_config = SettingsConfigDict(env_prefix="PSEUDOSERVE_", extra="ignore", use_attribute_docstrings=True)

    model_repository: Path = Path("models")
    """Folder in Triton's layout: <repo>/<model>/[config.pbtxt] and <repo>/<model>/<version>/model.onnx."""
    host: str = "127.0.0.1"
    """Address the gRPC and metrics servers bind to."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """gRPC port (0 = pick a free one; the ready file reports it)."""
    metrics_port: int = Field(8002, ge=0, le=65535)
    """Prometheus /metrics port (0 = pick a free one)."""
    ready_file: Path | None = None
    """Where to write {"pid","grpc_port","metrics_port"} once serving."""
    log_level: str = "INFO"
    """Python logging level name."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text, or as one JSON object per line (structured logs)."""

    auth_token: SecretStr | None = None
    """Bearer token required for RepositoryModelLoad/Unload (None = unprotected)."""
    tls_cert_file: Path | None = None
    """PEM certificate chain for TLS on the gRPC port (with tls_key_file)."""
    tls_key_file: Path | None = None
    """PEM private key for TLS on the gRPC port."""

    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Largest gRPC message accepted or sent; larger ones get RESOURCE_EXHAUSTED."""
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish before the process exits."""
    repository_poll_seconds: float = Field(0.0, ge=0)
    """Poll the repository for new/removed versions every N seconds (0 = only on RepositoryModelLoad)."""
    compute_threads: int = Field(2, ge=1)
    """Threads of the bounded executor that runs onnxruntime off the event loop."""
    inline_compute_max_us: float = Field(300.0, ge=0)
    """Run a call on the event loop instead of the executor when its expected compute time is below this (µs; 0 = never)."""
    default_max_batch_size: int = Field(64, ge=0)
    """max_batch_size given to a model without config.pbtxt whose inputs and outputs have a dynamic first dimension."""
    default_max_queue_delay_us: int = Field(0, ge=0)
    """Batching delay for auto-completed configs (0 = take what is queued, never wait)."""
    default_nan_policy: Literal["reject", "allow"] = "reject"
    """What to do with NaN/inf in float inputs when a model's config does not say (parameter nan_policy)."""
    default_intra_op_threads: int = Field(1, ge=0)
    """onnxruntime intra-op threads per session unless the config's intra_op_thread_count says (0 = onnxruntime's default)."""
    execution_providers: list[str] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    """Execution providers in order of preference, filtered by what the installed onnxruntime offers."""
    load_timeout_seconds: float = Field(300.0, gt=0)
    """Longest a model version may take to load and warm up."""

    trainer_address: str | None = None
    """host:port of the trainer's Collector; None disables capture."""
    capture_sampling: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of successful requests captured (0 disables capture)."""
    capture_models: list[str] = []
    """Models whose traffic is captured (empty = all models)."""
    capture_max_record_bytes: int = Field(1_048_576, gt=0)
    """Captured records whose inputs exceed this many bytes are sent without their inputs (truncated)."""
    capture_queue_size: int = Field(10_000, gt=0)
    """Capture records held in memory before new ones are dropped."""
    capture_batch_size: int = Field(1024, gt=0)
    """Records per CaptureBatch sent to the trainer (one transaction and acknowledgement each)."""
    capture_flush_interval: float = Field(1.0, gt=0)
    """Seconds a captured batch may wait to fill before it is sent anyway (checked at least every 0.2 s, so up to
    0.2 s more; longer while 4 sent batches await the trainer's acknowledgement)."""
    trainer_token: SecretStr | None = None
    """Bearer token the service presents to the trainer."""
    trainer_tls_ca_file: Path | None = None
    """PEM CA bundle to verify the trainer's TLS certificate (None = plaintext)."""

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return upper
