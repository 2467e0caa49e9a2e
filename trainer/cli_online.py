"""`pseudoserve trainer` (run the sidecar) and `pseudoserve status` (print a trainer's Status as
JSON), called by the dispatcher in pseudoserve/cli.py.

Adding arguments is cheap (no heavy imports); settings come from `PSEUDOSERVE_TRAINER_*`
environment variables with the flags given on the command line taking precedence. Secrets are read
from files (`--auth-token-file`, `--service-token-file`) or the environment, never from argv.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `pseudoserve trainer`; unset flags fall back to the environment, then defaults."""
    add = parser.add_argument
    add("--store", type=Path, help="SQLite sample store file (created when missing)")
    add("--model-repository", type=Path, help="Triton-layout model repository shared with the service")
    add("--service-address", help="HOST:PORT of the inference service")
    add("--model-name", help="model the trainer improves (default: classifier)")
    add("--host", help="interface to bind (default 127.0.0.1)")
    add("--grpc-port", type=int, help="gRPC port of the Collector and Trainer services (default 8004, 0 = any)")
    add("--metrics-port", type=int, help="HTTP port of /metrics and /reports/ (default 8003, 0 = any)")
    add("--http-port", type=int, help="separate HTTP port for /reports/ (default: the metrics port)")
    add("--ready-file", type=Path, help="write {pid, grpc_port, metrics_port} here once ready")
    add("--labeled", "--labeled-file", dest="labeled_file", type=Path, help="labeled seed set file")
    add("--holdout", "--holdout-file", dest="holdout_file", type=Path, help="labeled holdout set file")
    add("--label-column", help="label column of the labeled/holdout files")
    add("--engine-config", dest="engine_config_file", type=Path, help="YAML configuration of the engine")
    add("--reports-dir", type=Path, help="folder of the round reports")
    add("--round-interval-seconds", type=float, help="run a round every N seconds (0 = off)")
    add("--round-min-new-samples", type=int, help="run a round after N new samples (0 = off)")
    add("--drift-threshold", type=float, help="run a round when served confidences drift (KS statistic, 0 = off)")
    add("--drift-window", type=int, help="samples compared by the drift trigger (default 500)")
    add("--max-samples", type=int, help="retention: most unlabeled samples kept")
    add("--max-bytes", type=int, help="retention: most unlabeled payload bytes kept")
    add("--max-age-seconds", type=float, help="retention: evict unlabeled samples older than this")
    add("--no-self-training", dest="self_training", action="store_const", const=False,
        help="collector-only: store traffic and labels, never run rounds")
    add("--auth-token-file", type=Path, help="file with the bearer token required on state-changing RPCs")
    add("--service-token-file", type=Path, help="file with the bearer token presented to the service")
    add("--tls-cert-file", type=Path, help="PEM certificate chain for TLS")
    add("--tls-key-file", type=Path, help="PEM private key for TLS")
    add("--service-tls-ca-file", type=Path, help="CA bundle to verify the service's TLS certificate")
    add("--cpu-policy", choices=["idle", "nice"],
        help="idle (default): run only on CPU time serving leaves (SCHED_IDLE); nice: only lower the niceness")
    add("--nice", type=int, help="CPU niceness to run at, 0-19 (default 10: serving on the same cores goes first; "
                                 "0 = as started)")
    add("--log-level", help="logging level (default INFO)")
    add("--log-format", choices=["text", "json"], help="text (default) or json: one JSON object per line")


_SETTING_FLAGS = ("store", "model_repository", "service_address", "model_name", "host", "grpc_port", "metrics_port",
                  "http_port", "labeled_file", "holdout_file", "label_column", "engine_config_file", "reports_dir",
                  "round_interval_seconds", "round_min_new_samples", "drift_threshold", "drift_window", "log_level", "log_format",
                  "max_samples", "max_bytes", "max_age_seconds", "cpu_policy", "nice",
                  "self_training", "tls_cert_file", "tls_key_file", "service_tls_ca_file")


def _read_secret(path: Path, flag: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise SystemExit(f"pseudoserve trainer: error: {flag} {path}: {e.strerror or e}") from e
    if not token:
        raise SystemExit(f"pseudoserve trainer: error: {flag} {path} is empty")
    return token


def build_settings(args: argparse.Namespace):  # -> TrainerSettings
    """TrainerSettings from the environment overridden by the flags that were given."""
    from pydantic import ValidationError

    from trainer.settings import TrainerSettings

    overrides = {name: getattr(args, name) for name in _SETTING_FLAGS if getattr(args, name, None) is not None}
    if args.auth_token_file is not None:
        overrides["auth_token"] = _read_secret(args.auth_token_file, "--auth-token-file")
    if args.service_token_file is not None:
        overrides["service_token"] = _read_secret(args.service_token_file, "--service-token-file")
    try:
        return TrainerSettings(**overrides)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                             for err in e.errors())
        raise SystemExit(f"pseudoserve trainer: error: {problems}") from None


def lower_priority(niceness: int, policy: str) -> None:
    """Raise the niceness of every thread of this process to at least `niceness` (never lower it:
    that needs privileges) and, with policy "idle", move every thread to SCHED_IDLE. On Linux both
    belong to each thread and new threads inherit their creator's, so the threads that imports
    already started (BLAS pools) are set one by one."""
    import logging
    import os

    tasks = Path("/proc/self/task")
    threads = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]  # 0: the process (not Linux)
    idle = policy == "idle" and hasattr(os, "SCHED_IDLE")
    for tid in threads:
        try:
            if 0 < niceness and os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except OSError:  # a thread that ended meanwhile, or one we may not touch: best effort
            continue
    logging.getLogger(__name__).info("running at CPU niceness %d%s", os.getpriority(os.PRIO_PROCESS, 0),
                                     " under SCHED_IDLE" if idle else "")


def run_trainer(args: argparse.Namespace) -> int:
    """Run the trainer sidecar until SIGTERM/SIGINT."""
    import asyncio

    settings = build_settings(args)
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    lower_priority(settings.nice, settings.cpu_policy)
    from trainer.server import TrainerStartupError, serve
    from trainer.store import StoreError

    try:
        return asyncio.run(serve(settings, args.ready_file))
    except (StoreError, TrainerStartupError) as e:
        print(f"pseudoserve trainer: error: {e}", file=sys.stderr)
        return 2


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `pseudoserve status`."""
    parser.add_argument("--address", required=True, help="HOST:PORT of the trainer's gRPC port")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    parser.add_argument("--tls-ca-file", type=Path, help="CA bundle to verify the trainer's TLS certificate")


def status_dict(response) -> dict:  # response: trainer_pb2.StatusResponse
    """The Status response as plain JSON types (numbers stay numbers)."""
    from google.protobuf.json_format import MessageToDict

    out = {"unlabeled": response.unlabeled, "labeled": response.labeled, "holdout": response.holdout,
           "feedback": response.feedback, "rounds": response.rounds, "active_version": response.active_version,
           "pseudo_labeled": response.pseudo_labeled, "stored_bytes": response.stored_bytes,
           "model_name": response.model_name, "round_in_progress": response.round_in_progress,
           "last_promotion": None}
    if response.HasField("last_promotion"):
        out["last_promotion"] = MessageToDict(response.last_promotion, preserving_proto_field_name=True)
    return out


def run_status(args: argparse.Namespace) -> int:
    """Print the trainer's Status as JSON; exit 1 when it cannot be reached."""
    import grpc

    from protos import trainer_pb2, trainer_pb2_grpc

    if args.tls_ca_file is not None:
        from service.security import channel_credentials

        channel = grpc.secure_channel(args.address, channel_credentials(args.tls_ca_file))
    else:
        channel = grpc.insecure_channel(args.address)
    try:
        response = trainer_pb2_grpc.TrainerStub(channel).Status(trainer_pb2.StatusRequest(), timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"pseudoserve status: error: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    print(json.dumps(status_dict(response), indent=2))
    return 0
