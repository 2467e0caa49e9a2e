"""Model configuration: Triton's config.pbtxt parsed with protobuf text_format into our subset of
`inference.ModelConfig`, completed from the ONNX graph, and reduced to the typed `ModelOptions`
the runtime uses.

Unknown Triton fields (`optimization { cuda { ... } }`, `sequence_batching`, `response_cache`,
...) are skipped and logged, so an existing Triton ONNX repository loads unchanged. Syntax errors
name the file, line and column. Per-model options our runtime adds travel in Triton's generic
`parameters` map, with the onnxruntime backend's names where one exists:
`intra_op_thread_count`, `inter_op_thread_count`, `execution_providers` (comma list),
`nan_policy` (reject|allow).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from protos import model_config_pb2 as mc
from service.errors import ConfigError
from service.tensors import BY_CONFIG_TYPE, DATATYPES

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
_ONNX_NAMES = {"", "onnxruntime", "onnxruntime_onnx"}


class _LoggingParser(text_format._Parser):
    """text_format's parser with unknown fields skipped and remembered."""

    def __init__(self) -> None:
        super().__init__(allow_unknown_field=True)
        self.skipped: list[str] = []

    def _SkipFieldContents(self, tokenizer, field_name, immediate_message_type):
        self.skipped.append(f"{immediate_message_type}.{field_name} (line {tokenizer._previous_line + 1})")
        super()._SkipFieldContents(tokenizer, field_name, immediate_message_type)


def parse_config(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    """Parse config.pbtxt text; ConfigError naming `source`, line and column on bad syntax."""
    config = mc.ModelConfig()
    parser = _LoggingParser()
    try:
        parser.ParseLines(text.split("\n"), config)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}:{exc}") from None
    if parser.skipped:
        log.info("%s: skipped fields outside pseudoserve's subset: %s", source, ", ".join(parser.skipped))
    return config


def read_config(model_dir: Path) -> mc.ModelConfig | None:
    """The parsed config.pbtxt of a model folder, or None when it has none."""
    path = model_dir / "config.pbtxt"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, str(path))


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """An input or output of an ONNX graph as onnxruntime reports it (dynamic dims are -1)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def complete_config(
    config: mc.ModelConfig | None,
    name: str,
    inputs: list[GraphTensor],
    outputs: list[GraphTensor],
    *,
    default_max_batch_size: int,
    default_max_queue_delay_us: int,
) -> mc.ModelConfig:
    """A copy of `config` with name, platform, max_batch_size, inputs and outputs filled from the
    graph, checked against it. With no config.pbtxt, batching is enabled (max_batch_size
    `default_max_batch_size`) when every input and output has a dynamic first dimension."""
    out = mc.ModelConfig()
    if config is not None:
        out.CopyFrom(config)
    where = f"model {name!r}"
    if out.name and out.name != name:
        raise ConfigError(f"{where}: config.pbtxt name {out.name!r} differs from the folder name")
    out.name = name
    backend = out.backend or out.platform
    if backend not in _ONNX_NAMES:
        raise ConfigError(f"{where}: platform/backend {backend!r} is not supported (only onnxruntime_onnx)")
    out.platform = PLATFORM
    if out.max_batch_size < 0:
        raise ConfigError(f"{where}: max_batch_size must be >= 0, got {out.max_batch_size}")
    if config is None:
        batchable = all(t.shape and t.shape[0] == -1 for t in [*inputs, *outputs])
        if batchable and default_max_batch_size > 0:
            out.max_batch_size = default_max_batch_size
            out.dynamic_batching.max_queue_delay_microseconds = default_max_queue_delay_us
    _complete_tensors(out, out.input, inputs, "input", where)
    _complete_tensors(out, out.output, outputs, "output", where)
    if not out.instance_group:
        group = out.instance_group.add()
        group.count = 1
        group.kind = mc.ModelInstanceGroup.KIND_AUTO
    if not out.HasField("version_policy"):
        out.version_policy.latest.num_versions = 1
    return out


def _complete_tensors(config: mc.ModelConfig, declared, graph: list[GraphTensor], kind: str, where: str) -> None:
    batch = config.max_batch_size > 0
    by_name = {t.name: t for t in graph}
    if not declared:
        for t in graph:
            entry = declared.add()
            entry.name = t.name
            entry.data_type = mc.DataType.Value(DATATYPES[t.datatype].config_type)
            dims = t.shape[1:] if batch else t.shape
            entry.dims.extend(dims)
        return
    for entry in declared:
        t = by_name.get(entry.name)
        if t is None:
            raise ConfigError(f"{where}: config {kind} {entry.name!r} is not in the ONNX graph "
                              f"(graph {kind}s: {', '.join(by_name) or 'none'})")
        graph_type = DATATYPES[t.datatype].config_type
        if entry.data_type == mc.TYPE_INVALID:
            entry.data_type = mc.DataType.Value(graph_type)
        elif mc.DataType.Name(entry.data_type) != graph_type:
            raise ConfigError(f"{where}: config {kind} {entry.name!r} has data_type "
                              f"{mc.DataType.Name(entry.data_type)} but the ONNX graph has {graph_type}")
        graph_dims = t.shape[1:] if batch else t.shape
        if batch and t.shape and t.shape[0] not in (-1,):
            raise ConfigError(f"{where}: max_batch_size > 0 but {kind} {entry.name!r} has fixed first "
                              f"dimension {t.shape[0]} in the ONNX graph")
        if entry.HasField("reshape"):
            continue  # Triton reshapes before the graph; dims are the client's view
        if not entry.dims:
            entry.dims.extend(graph_dims)
        elif len(entry.dims) != len(graph_dims) or any(
                c != g and c != -1 and g != -1 for c, g in zip(entry.dims, graph_dims)):
            raise ConfigError(f"{where}: config {kind} {entry.name!r} dims {list(entry.dims)} do not match "
                              f"the ONNX graph's {list(graph_dims)}" + (" (batch dimension excluded)" if batch else ""))
    if kind == "input":
        missing = [t.name for t in graph if t.name not in {e.name for e in declared}]
        if missing:
            raise ConfigError(f"{where}: ONNX graph inputs missing from config.pbtxt: {', '.join(missing)}")


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """What the runtime needs from a completed config, typed."""

    max_batch_size: int
    max_queue_delay_us: int
    instance_count: int
    execution_providers: tuple[str, ...]
    intra_op_threads: int
    inter_op_threads: int
    nan_policy: str
    model_filename: str


def model_options(config: mc.ModelConfig, *, default_providers: list[str], default_intra_op_threads: int,
                  default_nan_policy: str) -> ModelOptions:
    """Typed options of a completed config; ConfigError naming the parameter when one is invalid."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    where = f"model {config.name!r}"

    def int_param(key: str, default: int) -> int:
        if key not in params:
            return default
        try:
            value = int(params[key])
        except ValueError:
            raise ConfigError(f"{where}: parameter {key} must be an integer, got {params[key]!r}") from None
        if value < 0:
            raise ConfigError(f"{where}: parameter {key} must be >= 0, got {value}")
        return value

    nan_policy = params.get("nan_policy", default_nan_policy)
    if nan_policy not in ("reject", "allow"):
        raise ConfigError(f"{where}: parameter nan_policy must be 'reject' or 'allow', got {nan_policy!r}")
    providers = _providers(config, params, default_providers)
    count = sum(max(g.count, 1) for g in config.instance_group) or 1
    delay = config.dynamic_batching.max_queue_delay_microseconds if config.HasField("dynamic_batching") else 0
    return ModelOptions(
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=int(delay),
        instance_count=count,
        execution_providers=providers,
        intra_op_threads=int_param("intra_op_thread_count", default_intra_op_threads),
        inter_op_threads=int_param("inter_op_thread_count", 1),
        nan_policy=nan_policy,
        model_filename=config.default_model_filename or "model.onnx",
    )


def _providers(config: mc.ModelConfig, params: dict[str, str], defaults: list[str]) -> tuple[str, ...]:
    if "execution_providers" in params:
        return tuple(p.strip() for p in params["execution_providers"].split(",") if p.strip())
    kinds = {g.kind for g in config.instance_group}
    if kinds == {mc.ModelInstanceGroup.KIND_CPU}:
        return ("CPUExecutionProvider",)
    accelerators = [a.name.lower() for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
    if "tensorrt" in accelerators:
        return ("TensorrtExecutionProvider", *defaults)
    return tuple(defaults)


def config_datatype(value: int) -> str:
    """Protocol datatype name (FP32, ...) of a model_config DataType enum value."""
    return BY_CONFIG_TYPE[mc.DataType.Name(value)].name
