"""Repository layout, version policies, polling stability and config.pbtxt parsing/completion."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from protos import model_config_pb2 as mc
from service.config import GraphTensor, complete_config, model_options, parse_config
from service.errors import ConfigError
from service.repository import ModelRepository, select_versions
from tests.fixtures.onnx_models import write_version

GRAPH_IN = [GraphTensor("input", "FP32", (-1, 64))]
GRAPH_OUT = [GraphTensor("probabilities", "FP32", (-1, 10))]


def _complete(config):
    return complete_config(config, "mlp", GRAPH_IN, GRAPH_OUT, default_max_batch_size=64, default_max_queue_delay_us=0)


def test_only_complete_numeric_folders_are_versions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for version in (1, 2, 10):
        write_version(repo, "m", version)
    (repo / "m" / "3").mkdir()  # no model file
    write_version(repo, "m", 4)
    (repo / "m" / "4" / ".incomplete").touch()
    write_version(repo / "m", ".tmp-x", 1)  # the trainer's hidden publish folder
    (repo / "m" / "abc").mkdir()
    (repo / "m" / "0").mkdir()
    (repo / ".hidden").mkdir()
    r = ModelRepository(repo)
    assert r.model_names() == ["m"]
    assert r.versions("m") == [1, 2, 10]
    assert r.latest_version("m") == 10
    assert r.next_version("m") == 11
    assert r.versions("absent") == [] and r.next_version("absent") == 1


def test_stable_scan_waits_for_unchanged_listing_or_marker(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_version(repo, "m", 1)
    r = ModelRepository(repo)
    assert r.versions("m", stable=True) == []  # first sighting
    assert r.versions("m", stable=True) == [1]  # unchanged since
    path = write_version(repo, "m", 2)
    assert r.versions("m", stable=True) == [1]
    with open(path, "ab") as fh:  # still being written
        fh.write(b"\0")
    os.utime(path, ns=(1, 1))
    assert r.versions("m", stable=True) == [1]
    assert r.versions("m", stable=True) == [1, 2]
    write_version(repo, "m", 3)
    (repo / "m" / "3" / ".complete").touch()
    assert r.versions("m", stable=True) == [1, 2, 3]  # the marker counts at once


@pytest.mark.parametrize("policy,expected", [
    ("", [3]),
    ("latest { num_versions: 2 }", [2, 3]),
    ("all { }", [1, 2, 3]),
    ("specific { versions: [1, 3, 7] }", [1, 3]),
])
def test_version_policy(policy: str, expected: list[int]) -> None:
    config = parse_config(f"version_policy {{ {policy} }}" if policy else "")
    assert select_versions([3, 1, 2], config.version_policy) == expected


def test_triton_fields_outside_our_subset_are_skipped_and_logged(caplog) -> None:
    text = """
    name: "mlp"
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    input [ { name: "input" data_type: TYPE_FP32 dims: [ 64 ] } ]
    sequence_batching { max_sequence_idle_microseconds: 5000 }
    optimization { cuda { graphs: true } input_pinned_memory { enable: true } }
    dynamic_batching { max_queue_delay_microseconds: 100 priority_levels: 2 }
    response_cache { enable: true }
    """
    with caplog.at_level(logging.INFO, logger="service.config"):
        config = parse_config(text, "repo/mlp/config.pbtxt")
    assert config.max_batch_size == 8 and config.dynamic_batching.max_queue_delay_microseconds == 100
    logged = caplog.text
    for field in ("sequence_batching", "cuda", "input_pinned_memory", "priority_levels", "response_cache"):
        assert field in logged


def test_syntax_errors_name_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('name: "m"\nmax_batch_size: "eight"\n', "repo/m/config.pbtxt")
    assert info.value.message.startswith("repo/m/config.pbtxt:2:")
    with pytest.raises(ConfigError) as info:
        parse_config('instance_group [ { kind: KIND_TPU } ]', "c.pbtxt")
    assert "c.pbtxt:1:" in info.value.message and "KIND_TPU" in info.value.message


def test_autocomplete_without_config_enables_batching() -> None:
    config = _complete(None)
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert config.platform == "onnxruntime_onnx"
    assert [(i.name, list(i.dims), mc.DataType.Name(i.data_type)) for i in config.input] == [("input", [64], "TYPE_FP32")]
    assert [(o.name, list(o.dims)) for o in config.output] == [("probabilities", [10])]
    assert config.version_policy.latest.num_versions == 1 and config.instance_group[0].count == 1


def test_fixed_batch_graph_is_served_without_batching() -> None:
    config = complete_config(None, "m", [GraphTensor("x", "FP32", (1, 4))], [GraphTensor("y", "FP32", (1, 4))],
                             default_max_batch_size=64, default_max_queue_delay_us=0)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 4]


@pytest.mark.parametrize("text,fragment", [
    ('input [ { name: "pixels" data_type: TYPE_FP32 dims: [ 64 ] } ]', "config input 'pixels' is not in the ONNX graph"),
    ('input [ { name: "input" data_type: TYPE_INT64 dims: [ 64 ] } ]', "has data_type TYPE_INT64 but the ONNX graph has TYPE_FP32"),
    ('max_batch_size: 4 input [ { name: "input" data_type: TYPE_FP32 dims: [ 32 ] } ]', "dims [32] do not match"),
    ('platform: "tensorrt_plan"', "not supported"),
    ('name: "other"', "differs from the folder name"),
])
def test_config_mismatch_with_graph(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _complete(parse_config(text))
    assert fragment in info.value.message


def test_model_options_from_parameters() -> None:
    config = _complete(parse_config("""
        max_batch_size: 16
        dynamic_batching { max_queue_delay_microseconds: 250 }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        parameters { key: "nan_policy" value: { string_value: "allow" } }
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
    """))
    options = model_options(config, default_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                            default_intra_op_threads=1, default_nan_policy="reject")
    assert (options.max_batch_size, options.max_queue_delay_us, options.instance_count) == (16, 250, 2)
    assert options.nan_policy == "allow" and options.intra_op_threads == 2
    assert options.execution_providers == ("CPUExecutionProvider",)  # KIND_CPU
    bad = _complete(parse_config('parameters { key: "nan_policy" value: { string_value: "ignore" } }'))
    with pytest.raises(ConfigError, match="nan_policy must be 'reject' or 'allow'"):
        model_options(bad, default_providers=[], default_intra_op_threads=1, default_nan_policy="reject")
