"""onnxruntime sessions for one model version: provider choice, session options, graph
inspection and the warm-up that must pass before a version reports READY.

Everything here blocks (file I/O, graph optimisation, inference) and runs in a worker thread
started by `service.manager`; nothing here touches the event loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from protos import model_config_pb2 as mc
from service.config import GraphTensor, ModelOptions, config_datatype
from service.errors import ModelLoadError
from service.tensors import BY_ORT_TYPE, DATATYPES

log = logging.getLogger(__name__)


def choose_providers(preferred: tuple[str, ...] | list[str], available: list[str] | None = None) -> list[str]:
    """`preferred` filtered by what the installed onnxruntime offers; CPU when none is left."""
    available = ort.get_available_providers() if available is None else available
    chosen = [p for p in preferred if p in available]
    return chosen or ["CPUExecutionProvider"]


def session_options(options: ModelOptions) -> ort.SessionOptions:
    """Session options: thread counts from the config, no busy-spinning (it steals the CPU the gRPC
    threads need on small machines)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def open_sessions(path: Path, options: ModelOptions, where: str) -> tuple[list[ort.InferenceSession], str]:
    """`instance_count` sessions of the model file and the provider actually in use."""
    if not path.is_file():
        raise ModelLoadError(f"{where}: model file {path} does not exist")
    providers = choose_providers(options.execution_providers)
    so = session_options(options)
    try:
        sessions = [ort.InferenceSession(str(path), so, providers=providers) for _ in range(options.instance_count)]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelLoadError(f"{where}: onnxruntime cannot load {path}: {_one_line(exc)}") from None
    return sessions, sessions[0].get_providers()[0]


RunFn = Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]
_EP_FAIL = getattr(getattr(ort.capi, "onnxruntime_pybind11_state", None), "EPFail", RuntimeError)


def request_runner(session: ort.InferenceSession) -> RunFn:
    """`session.run` for the request path, without the public wrapper's Python-side checks.

    `InferenceSession.run` re-validates the feed names and OrtValue ownership in Python before
    calling the C++ session (~5-15 µs, a tenth of a small model's whole request path here);
    `LoadedModel.validate` has already checked names, datatypes and shapes against this session's
    metadata, so the request path calls the same C++ method directly. The public method is kept
    for an execution-provider failure (it owns onnxruntime's provider fallback) and for an
    onnxruntime build without the binding attribute.
    """
    inner = getattr(session, "_sess", None)
    if inner is None or not callable(getattr(inner, "run", None)):
        return session.run

    def run(names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return inner.run(names, feeds, None)
        except _EP_FAIL:
            return session.run(names, feeds)

    return run


def graph_tensors(args: list) -> list[GraphTensor]:
    """Names, datatypes and shapes (-1 for symbolic dims) of onnxruntime NodeArgs."""
    out = []
    for arg in args:
        dt = BY_ORT_TYPE.get(arg.type)
        if dt is None:
            raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which pseudoserve does not serve")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        out.append(GraphTensor(arg.name, dt.name, shape))
    return out


def class_names(session: ort.InferenceSession, n_classes: int | None) -> list[str]:
    """Class labels from the ONNX metadata_props `class_names` (JSON list), else "0".."n-1"."""
    raw = session.get_modelmeta().custom_metadata_map.get("class_names")
    if raw:
        try:
            names = json.loads(raw)
            if isinstance(names, list):
                return [str(n) for n in names]
        except json.JSONDecodeError:
            log.warning("class_names metadata is not a JSON list: %r", raw[:80])
    return [str(i) for i in range(n_classes or 0)]


@dataclass(frozen=True)
class WarmupResult:
    """Measured compute time of a batch of 1 and of a full batch (seconds)."""

    single_s: float
    full_s: float
    full_rows: int

    def estimate(self, rows: int) -> float:
        """Linear estimate of a call's compute time for `rows` rows."""
        if self.full_rows <= 1:
            return self.single_s * max(rows, 1)
        per_row = max(self.full_s - self.single_s, 0.0) / (self.full_rows - 1)
        return self.single_s + per_row * (rows - 1)


def warm_up(sessions: list[ort.InferenceSession], config: mc.ModelConfig, where: str) -> WarmupResult:
    """Run every session on zeros (or the config's model_warmup samples) at batch 1 and at
    max_batch_size; ModelLoadError when it fails or a float output is not finite."""
    batch = config.max_batch_size > 0
    sizes = [1, config.max_batch_size] if batch and config.max_batch_size > 1 else [1]
    timings: dict[int, float] = {}
    for rows in sizes:
        feeds = _warmup_feeds(config, rows if batch else None)
        for session in sessions:
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                try:
                    outputs = session.run(None, feeds)
                except Exception as exc:  # noqa: BLE001
                    raise ModelLoadError(f"{where}: warm-up inference failed: {_one_line(exc)}") from None
                best = min(best, time.perf_counter() - start)
            for meta, value in zip(session.get_outputs(), outputs):
                if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise ModelLoadError(f"{where}: warm-up output {meta.name!r} is not finite (NaN or inf)")
            timings[rows] = best
    for warmup in config.model_warmup:
        feeds = {}
        for name, spec in warmup.inputs.items():
            dtype = DATATYPES[config_datatype(spec.data_type)].dtype
            shape = ([warmup.batch_size] if batch and warmup.batch_size else []) + list(spec.dims)
            data = np.random.default_rng(0).random(shape) if spec.random_data else np.zeros(shape)
            feeds[name] = data.astype(dtype)
        for session in sessions:
            for _ in range(max(warmup.count, 1)):
                try:
                    session.run(None, feeds)
                except Exception as exc:  # noqa: BLE001
                    raise ModelLoadError(f"{where}: model_warmup {warmup.name!r} failed: {_one_line(exc)}") from None
    return WarmupResult(timings[1], timings[sizes[-1]], sizes[-1])


def _warmup_feeds(config: mc.ModelConfig, rows: int | None) -> dict[str, np.ndarray]:
    feeds = {}
    for entry in config.input:
        dims = [1 if d < 0 else d for d in entry.dims]
        shape = ([rows] if rows is not None else []) + dims
        feeds[entry.name] = np.zeros(shape, dtype=DATATYPES[config_datatype(entry.data_type)].dtype)
    return feeds


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__
