"""The committed stubs are exactly what `make protos` generates, and our `inference` protos are
wire-identical (names, field numbers, types) to Triton's, as shipped inside tritonclient.

This module lives under tests/triton because it imports tritonclient; it reads our protos through
a FileDescriptorSet produced by protoc, never through protos.inference_pb2 (see protos/__init__).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted((ROOT / "protos").glob("*.proto"))


def _protoc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT), *args,
                    *[str(p.relative_to(ROOT)) for p in PROTOS]], cwd=ROOT, check=True)


def test_regeneration_leaves_no_diff(tmp_path: Path) -> None:
    _protoc(f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}")
    generated = sorted((tmp_path / "protos").iterdir())
    assert generated, "protoc generated nothing"
    committed = {p.name for p in (ROOT / "protos").iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))}
    assert {p.name for p in generated} == committed
    for path in generated:
        assert path.read_bytes() == (ROOT / "protos" / path.name).read_bytes(), f"{path.name} is stale: run make protos"


@pytest.fixture(scope="module")
def ours() -> dict[str, descriptor_pb2.DescriptorProto]:
    out = ROOT / ".pytest_cache" / "protos.pb"
    out.parent.mkdir(exist_ok=True)
    _protoc(f"--descriptor_set_out={out}", "--include_imports")
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, msg: descriptor_pb2.DescriptorProto) -> None:
        messages[f"{prefix}.{msg.name}"] = msg
        for nested in msg.nested_type:
            walk(f"{prefix}.{msg.name}", nested)

    for f in fds.file:
        if f.package == "inference":
            for m in f.message_type:
                walk("inference", m)
    return messages


def _triton_message(full_name: str):
    for module in (triton_service, triton_config):
        try:
            return module.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
        except KeyError:
            continue
    raise AssertionError(f"{full_name} is not a Triton message")


def test_every_message_and_field_matches_triton(ours) -> None:
    assert "inference.ModelInferRequest" in ours and "inference.ModelConfig" in ours
    for full_name, msg in ours.items():
        theirs = _triton_message(full_name)
        for field in msg.field:
            t = theirs.fields_by_name.get(field.name)
            assert t is not None, f"{full_name}.{field.name} does not exist in Triton's protos"
            assert t.number == field.number, f"{full_name}.{field.name}: {field.number} != Triton's {t.number}"
            assert t.type == field.type, f"{full_name}.{field.name}: wire type differs from Triton's"
            assert t.is_repeated == (field.label == field.LABEL_REPEATED), f"{full_name}.{field.name}: cardinality"
            if field.type_name:
                their_type = (t.message_type or t.enum_type).full_name
                assert field.type_name.lstrip(".") == their_type, f"{full_name}.{field.name}: type {field.type_name}"


def test_service_methods_match_triton() -> None:
    out = ROOT / ".pytest_cache" / "service.pb"
    _protoc(f"--descriptor_set_out={out}")
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (service,) = [s for f in fds.file if f.package == "inference" for s in f.service]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.method:
        t = theirs.methods_by_name[method.name]
        assert method.input_type.lstrip(".") == t.input_type.full_name
        assert method.output_type.lstrip(".") == t.output_type.full_name
        assert method.client_streaming == t.client_streaming and method.server_streaming == t.server_streaming
