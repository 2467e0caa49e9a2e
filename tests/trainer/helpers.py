"""Shared helpers of the trainer tests: an in-process collector-only trainer on port 0, a tiny
softmax ONNX model in a Triton-layout repository, and waiting with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry

from trainer.server import TrainerProcess
from trainer.settings import TrainerSettings


def trainer_settings(tmp_path: Path, **overrides) -> TrainerSettings:
    values = {"store": tmp_path / "store.db", "grpc_port": 0, "metrics_port": 0, "self_training": False,
              "model_repository": tmp_path / "repo", "reports_dir": tmp_path / "reports", "model_name": "classifier"}
    values.update(overrides)
    return TrainerSettings(**values)


async def start_trainer(tmp_path: Path, **overrides) -> TrainerProcess:
    process = TrainerProcess(trainer_settings(tmp_path, **overrides), registry=CollectorRegistry())
    await process.start()
    return process


def write_softmax_model(path: Path, weight: np.ndarray, bias: np.ndarray) -> None:
    """model.onnx computing probabilities = softmax(input @ weight + bias), input [-1, features]."""
    features, classes = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "softmax", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes])],
        [numpy_helper.from_array(weight.astype(np.float32), "W"), numpy_helper.from_array(bias.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


async def eventually(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)
