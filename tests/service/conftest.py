"""Fixtures for in-process service tests: a Triton-layout repository with the MLP, and a real
`InferenceServer` on port 0 with a grpc.aio stub of our own `inference` protos."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry

from protos import inference_pb2_grpc
from service.server import InferenceServer
from service.settings import ServerSettings
from tests.fixtures.onnx_models import write_version
from tests.fixtures.servers import make_settings


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_version(root, "mlp", 1)
    return root


@pytest.fixture
async def start_server():
    """Factory: `await start_server(settings)` -> (server, stub); stops everything afterwards."""
    started: list[tuple[InferenceServer, grpc.aio.Channel]] = []

    async def start(settings: ServerSettings):
        server = InferenceServer(settings, CollectorRegistry())
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        started.append((server, channel))
        return server, inference_pb2_grpc.GRPCInferenceServiceStub(channel)

    yield start
    for server, channel in started:
        await channel.close()
        await server.stop()


@pytest.fixture
async def served(repo: Path, start_server):
    """(server, stub) serving `repo` (model `mlp` version 1)."""
    return await start_server(make_settings(repo))
