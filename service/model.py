"""`ModelVersion`: one loaded, warmed-up version of a model, serving through its own
`DynamicBatcher` over `instance_count` onnxruntime sessions.

It validates inputs against its own specs (so a hot-swapped version with other shapes checks
requests its own way), counts in-flight requests so a retired version is released only after
its last request, and records batch metrics and served-prediction confidence.
`load_version` builds one (blocking: called in a worker thread by `service.manager`).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from protos import model_config_pb2 as mc
from service import runtime
from service.batcher import DynamicBatcher
from service.config import ModelOptions, complete_config, config_datatype, model_options
from service.domain import InferInput, TensorSpec
from service.errors import InvalidArgument, ModelLoadError, ResourceExhausted
from service.metrics import ServiceMetrics, VersionMetrics
from service.settings import ServerSettings
from service.tensors import BY_ORT_TYPE, DATATYPES

log = logging.getLogger(__name__)


class ModelVersion:
    """A ready model version: specs, sessions, batcher, metrics and an in-flight count."""

    def __init__(self, *, name: str, version: int, config: mc.ModelConfig, options: ModelOptions,
                 sessions: list, provider: str, warmup: runtime.WarmupResult, class_names: list[str],
                 metrics: VersionMetrics, service_metrics: ServiceMetrics, executor: Executor,
                 inline_max_s: float, signature: object) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.options = options
        self.provider = provider
        self.signature = signature
        self.metrics = metrics
        self._service_metrics = service_metrics
        metrics.inflight = lambda: self.inflight
        self.class_names = class_names
        self.warmup = warmup
        self._sessions = sessions
        self._runners = [runtime.request_runner(s) for s in sessions]
        batch = config.max_batch_size > 0
        self.inputs = {e.name: tensor_spec(e.name, e.data_type, e.dims, batch) for e in config.input}
        self.optional_inputs = {e.name for e in config.input if e.optional}
        self.outputs = [tensor_spec(a.name, _ort_datatype(a.type), a.shape, False) for a in sessions[0].get_outputs()]
        self.output_index = {s.name: i for i, s in enumerate(self.outputs)}
        self.prob_index = _probabilities_index(self.outputs)
        self.check_nan = options.nan_policy == "reject"
        self._float_inputs = {n for n, s in self.inputs.items() if s.dtype.kind == "f"}
        self._output_names = [s.name for s in self.outputs]
        self.batcher = DynamicBatcher(
            self._run, instances=len(sessions), max_batch_size=options.max_batch_size,
            max_queue_delay_s=options.max_queue_delay_us / 1e6, executor=executor,
            inline_max_s=inline_max_s, estimate_s=warmup.estimate, on_batch=self._on_batch)
        self.inflight = 0
        self.retired = False
        self._drained: asyncio.Event | None = None

    # --- request path -------------------------------------------------------------------------
    def validate(self, inputs: list[InferInput]) -> tuple[dict[str, np.ndarray], int]:
        """Feeds for onnxruntime and the batch size; InvalidArgument/ResourceExhausted naming the
        input and what was expected."""
        specs = self.inputs
        feeds: dict[str, np.ndarray] = {}
        batched = self.options.max_batch_size > 0
        rows = 1
        for tensor in inputs:
            spec = specs.get(tensor.name)
            if spec is None:
                raise InvalidArgument(f"unknown input {tensor.name!r} for model {self.name!r} "
                                      f"(inputs: {', '.join(specs)})")
            if tensor.name in feeds:
                raise InvalidArgument(f"input {tensor.name!r} given more than once")
            if tensor.datatype != spec.datatype:
                raise InvalidArgument(f"input {tensor.name!r}: datatype {tensor.datatype} does not match "
                                      f"the model's {spec.datatype}")
            shape = tensor.shape
            expected = spec.shape
            if len(shape) != len(expected) or any(e != -1 and s != e for s, e in zip(shape, expected)):
                raise InvalidArgument(f"input {tensor.name!r}: shape {list(shape)} does not match the model's "
                                      f"{list(expected)} (-1 = any)")
            if batched:
                n = shape[0]
                if not feeds:
                    rows = n
                elif n != rows:
                    raise InvalidArgument(f"input {tensor.name!r}: batch size {n} differs from the other "
                                          f"inputs' {rows}")
            if self.check_nan and tensor.name in self._float_inputs and not np.isfinite(tensor.data).all():
                raise InvalidArgument(f"input {tensor.name!r} contains NaN or infinity "
                                      f"(model {self.name!r} rejects them: nan_policy=reject)")
            feeds[tensor.name] = tensor.data
        if len(feeds) != len(specs):
            missing = [n for n in specs if n not in feeds and n not in self.optional_inputs]
            if missing:
                raise InvalidArgument(f"missing input {', '.join(map(repr, missing))} for model {self.name!r}")
        if batched:
            if rows < 1:
                raise InvalidArgument(f"batch size must be at least 1, got {rows}")
            if rows > self.options.max_batch_size:
                raise ResourceExhausted(f"batch size {rows} exceeds max_batch_size "
                                        f"{self.options.max_batch_size} of model {self.name!r}")
        return feeds, rows

    def output_positions(self, names: list[str]) -> list[int]:
        """Indices of requested outputs; InvalidArgument for an unknown name."""
        index = self.output_index
        positions = []
        for name in names:
            position = index.get(name)
            if position is None:
                raise InvalidArgument(f"unknown requested output {name!r} for model {self.name!r} "
                                      f"(outputs: {', '.join(index)})")
            positions.append(position)
        return positions

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._drained is not None:
            self._drained.set()

    async def drained(self) -> None:
        """Return once no request holds this version (call after it stops being handed out)."""
        if self.inflight == 0:
            return
        if self._drained is None:
            self._drained = asyncio.Event()
        await self._drained.wait()

    def close(self) -> None:
        """Release the sessions (the version must be drained)."""
        self._sessions = []
        self._runners = []
        self._service_metrics.version_released(self.metrics)

    # --- internals ----------------------------------------------------------------------------
    def _run(self, index: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._runners[index](self._output_names, feeds)

    def _on_batch(self, outputs: list[np.ndarray], rows: int, compute_s: float) -> None:
        self.metrics.batch_computed(rows, compute_s)
        if self.prob_index is None:
            return
        probs = outputs[self.prob_index]
        if probs.ndim == 2 and probs.shape[1] > 0:
            self.metrics.predictions(probs)


def _ort_datatype(ort_type: str) -> str:
    dt = BY_ORT_TYPE.get(ort_type)
    if dt is None:
        raise ModelLoadError(f"output type {ort_type} is not served by pseudoserve")
    return dt.name


def tensor_spec(name: str, data_type, dims, batch: bool) -> TensorSpec:
    datatype = data_type if isinstance(data_type, str) else config_datatype(data_type)
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)
    if batch:
        shape = (-1, *shape)
    return TensorSpec(name, datatype, DATATYPES[datatype].dtype, shape)


def _probabilities_index(outputs: list[TensorSpec]) -> int | None:
    """The output named `probabilities`, else the first 2-D float output."""
    for i, spec in enumerate(outputs):
        if spec.name == "probabilities":
            return i
    for i, spec in enumerate(outputs):
        if len(spec.shape) == 2 and spec.dtype.kind == "f":
            return i
    return None


def load_version(*, name: str, version: int, path: Path, config: mc.ModelConfig | None, signature: object,
                 settings: ServerSettings, metrics: ServiceMetrics, executor: Executor) -> ModelVersion:
    """Open, check and warm up one version (blocking). ModelLoadError says why it failed."""
    where = f"model {name!r} version {version}"
    base = config if config is not None else mc.ModelConfig()
    pre = model_options(base, default_providers=settings.execution_providers,
                        default_intra_op_threads=settings.default_intra_op_threads,
                        default_nan_policy=settings.default_nan_policy)
    sessions, provider = runtime.open_sessions(path, pre, where)
    try:
        inputs = runtime.graph_tensors(sessions[0].get_inputs())
        outputs = runtime.graph_tensors(sessions[0].get_outputs())
    except ModelLoadError as exc:
        raise ModelLoadError(f"{where}: {exc.message}") from None
    completed = complete_config(config, name, inputs, outputs,
                                default_max_batch_size=settings.default_max_batch_size,
                                default_max_queue_delay_us=settings.default_max_queue_delay_us)
    options = model_options(completed, default_providers=settings.execution_providers,
                            default_intra_op_threads=settings.default_intra_op_threads,
                            default_nan_policy=settings.default_nan_policy)
    completed.parameters["execution_provider"].string_value = provider
    for group in completed.instance_group:  # report where the sessions actually run
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_CPU if provider == "CPUExecutionProvider" \
                else mc.ModelInstanceGroup.KIND_GPU
    warm = runtime.warm_up(sessions, completed, where)
    n_classes = None
    for o in outputs:
        if len(o.shape) == 2 and o.shape[1] > 0:
            n_classes = o.shape[1]
            break
    names = runtime.class_names(sessions[0], n_classes)
    version_metrics = metrics.for_version(name, str(version), provider, names)
    log.info("%s ready on %s (%d instance(s), max_batch_size %d, warm-up %.0f µs at batch 1)",
             where, provider, len(sessions), options.max_batch_size, warm.single_s * 1e6)
    return ModelVersion(name=name, version=version, config=completed, options=options, sessions=sessions,
                        provider=provider, warmup=warm, class_names=names, metrics=version_metrics,
                        service_metrics=metrics,
                        executor=executor, inline_max_s=settings.inline_compute_max_us / 1e6,
                        signature=signature)
