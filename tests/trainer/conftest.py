"""Builders of capture records and labeled data for the trainer tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from protos import collector_pb2
from service.capture import build_batch, queue_item
from service.domain import InferInput


@dataclass(frozen=True)
class Captured:
    """One served sample as the service queues it for capture: input shape [1, *x.shape]."""

    request_id: str
    x: np.ndarray  # float32 features
    probabilities: np.ndarray  # float32 distribution
    model: str = "classifier"
    version: str = "1"

    @property
    def nbytes(self) -> int:
        """What the store counts for it: input bytes plus probability bytes."""
        return self.x.nbytes + self.probabilities.nbytes

    def offered(self) -> tuple:
        """The item `service.capture.Capture.offer` queues for this sample."""
        x = self.x[None, :]
        return queue_item(1, self.request_id, self.model, self.version, [InferInput("input", "FP32", x.shape, x, x.tobytes())],
                          self.probabilities[None, :], 1)


def make_record(request_id: str, x: np.ndarray, probs: np.ndarray, *, model: str = "classifier",
                version: str = "1") -> Captured:
    return Captured(request_id, np.asarray(x, dtype=np.float32), np.asarray(probs, dtype=np.float32), model, version)


def groups(records: list[Captured], *, max_record_bytes: int = 1 << 20) -> list[collector_pb2.CaptureGroup]:
    """The CaptureGroups the service sends for these samples (its own conversion)."""
    return list(build_batch([r.offered() for r in records], max_record_bytes)[0])


def batch(batch_id: int, records: list[Captured], sender: str = "test") -> collector_pb2.CaptureBatch:
    return collector_pb2.CaptureBatch(batch_id=batch_id, sender=sender, groups=groups(records))


def random_records(n: int, *, start: int = 0, features: int = 4, classes: int = 3, seed: int = 0,
                   model: str = "classifier") -> list[Captured]:
    rng = np.random.default_rng(seed + start)
    out = []
    for i in range(start, start + n):
        logits = rng.normal(size=classes)
        probs = np.exp(logits) / np.exp(logits).sum()
        out.append(make_record(f"req-{i}", rng.normal(size=features), probs, model=model))
    return out


@pytest.fixture
def records() -> list[Captured]:
    return random_records(20)
