"""Typed settings of the trainer sidecar, read from `PSEUDOSERVE_TRAINER_*` environment variables
and overridden by `pseudoserve trainer` command-line flags (see `trainer.cli_online`).

The collector/store/control fields are used by `trainer.server`; the self-training fields
(`model_repository` ... `reports_dir`) are passed through to `trainer.online.build_round_runner`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    """Everything `pseudoserve trainer` needs; built once in `run_trainer`, never at import."""

    model_config = SettingsConfigDict(env_prefix="PSEUDOSERVE_TRAINER_", extra="forbid")

    store: Path = Path("pseudoserve-store.sqlite")
    """SQLite sample store file; created when missing, refused when foreign or corrupt."""
    host: str = "127.0.0.1"
    """Interface the gRPC, metrics and report servers bind to."""
    grpc_port: int = Field(8004, ge=0, le=65535)
    """Port of the Collector and Trainer gRPC services (0 = any free port)."""
    metrics_port: int = Field(8003, ge=0, le=65535)
    """Port of the HTTP server with /metrics and the round reports under /reports/ (0 = any)."""
    http_port: int | None = Field(None, ge=0, le=65535)
    """Separate port for the /reports/ pages; None serves them on the metrics port."""
    auth_token: SecretStr | None = None
    """Bearer token required on SubmitLabels, TriggerRound and Collector/Stream; None = open."""
    tls_cert_file: Path | None = None
    """PEM certificate chain for TLS on the gRPC port (with tls_key_file); None = plaintext."""
    tls_key_file: Path | None = None
    """PEM private key matching tls_cert_file."""
    max_samples: int | None = Field(None, ge=1)
    """Retention: most captured unlabeled samples kept (oldest evicted first); None = no limit."""
    max_bytes: int | None = Field(None, ge=1)
    """Retention: most payload bytes of captured unlabeled samples kept; None = no limit."""
    max_age_seconds: float | None = Field(None, gt=0)
    """Retention: captured unlabeled samples older than this are evicted; None = kept forever."""
    self_training: bool = True
    """Run self-training rounds (False = collector-only: TriggerRound is refused)."""
    model_repository: Path = Path("models")
    """Triton-layout model repository shared with the service (students are published here)."""
    service_address: str = "127.0.0.1:8001"
    """HOST:PORT of the inference service (RepositoryModelLoad after a promotion)."""
    service_token: SecretStr | None = None
    """Bearer token the trainer presents to the service's RepositoryModelLoad."""
    service_tls_ca_file: Path | None = None
    """CA bundle to verify the service's TLS certificate; None = plaintext channel."""
    model_name: str = "classifier"
    """Name of the model the trainer improves (its folder in the repository)."""
    labeled_file: Path | None = None
    """Labeled seed set (CSV/Parquet/NPZ) loaded into the store's labeled pool at start-up."""
    holdout_file: Path | None = None
    """Labeled holdout set that gates every promotion."""
    label_column: str | None = None
    """Name of the label column in labeled_file/holdout_file (tabular files)."""
    engine_config_file: Path | None = None
    """YAML file with the self-training engine's configuration; None = engine defaults."""
    round_interval_seconds: float = Field(0.0, ge=0)
    """Run a round every this many seconds (0 = only on TriggerRound or new-sample triggers)."""
    round_min_new_samples: int = Field(0, ge=0)
    """Start a round once this many new unlabeled samples arrived (0 = off)."""
    reports_dir: Path = Path("reports")
    """Folder where round reports are written and served under /reports/."""
    drift_threshold: float = Field(0.0, ge=0.0, le=1.0)
    """Start a round when the two-sample KS statistic between the served confidences after the last
    round and the newest ones reaches this (0 = off; 0.2 is a reasonable start)."""
    drift_window: int = Field(500, ge=10)
    """Served samples compared by the drift trigger (reference window and newest window)."""
    cpu_policy: Literal["idle", "nice"] = "idle"
    """How the trainer yields the CPU to the inference server on shared cores. `idle`: every thread
    runs under Linux's SCHED_IDLE policy, i.e. only on CPU time nothing else wants, and is preempted
    as soon as a serving thread wakes; on saturated cores collection then falls behind (the
    service's bounded capture queue drops the oldest records, counted) and rounds wait. `nice`:
    only the niceness below, so the trainer keeps a small share (about a tenth at niceness 10) of
    saturated cores. (Between containers, CPU requests decide instead: see k8s/README.md.)"""
    nice: int = Field(10, ge=0, le=19)
    """CPU niceness the trainer runs at (0-19). At start-up it raises its own, every thread's, to
    this value, so that on cores shared with the inference server (niceness 0) serving gets the CPU
    first and collection and rounds use what is left; 0 = keep the niceness it was started with.
    Decides the trainer's share of saturated cores under cpu_policy=nice."""
    log_level: str = "INFO"
    """Python logging level name."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text, or as one JSON object per line (structured logs; round summaries carry
    their fields)."""

    @model_validator(mode="after")
    def _tls_pair(self) -> TrainerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        return self
