"""Builders of capture records and labeled data for the trainer tests."""

from __future__ import annotations

import numpy as np
import pytest

from protos import collector_pb2


def make_record(request_id: str, x: np.ndarray, probs: np.ndarray, *, model: str = "classifier",
                version: str = "1") -> collector_pb2.CaptureRecord:
    """One captured sample as the service sends it: input shape [1, *x.shape]."""
    x = np.asarray(x, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float32)
    top = np.sort(probs)[::-1]
    return collector_pb2.CaptureRecord(
        request_id=request_id, model_name=model, model_version=version, timestamp_ns=1,
        inputs=[collector_pb2.Tensor(name="input", datatype="FP32", shape=[1, *x.shape], data=x.tobytes())],
        probabilities=probs.tolist(), predicted_class=int(np.argmax(probs)), confidence=float(top[0]),
        margin=float(top[0] - top[1]))


def random_records(n: int, *, start: int = 0, features: int = 4, classes: int = 3, seed: int = 0,
                   model: str = "classifier") -> list[collector_pb2.CaptureRecord]:
    rng = np.random.default_rng(seed + start)
    out = []
    for i in range(start, start + n):
        logits = rng.normal(size=classes)
        probs = np.exp(logits) / np.exp(logits).sum()
        out.append(make_record(f"req-{i}", rng.normal(size=features), probs, model=model))
    return out


@pytest.fixture
def records() -> list[collector_pb2.CaptureRecord]:
    return random_records(20)
