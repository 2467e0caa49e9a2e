"""The inline request path's deferred metrics fold into exactly what the per-request calls give."""

from __future__ import annotations

import time

import numpy as np
import pytest

from service.metrics import FLUSH_AT, VersionMetrics


def test_folded_inline_records_equal_per_request_recording() -> None:
    names = [str(i) for i in range(10)]
    inline, direct = VersionMetrics("m", "1", "cpu", names), VersionMetrics("m", "1", "cpu", names)
    rng = np.random.default_rng(0)
    for _ in range(FLUSH_AT + 500):  # crosses the automatic fold once
        rows = int(rng.integers(1, 4))
        total = float(rng.random()) * 1e-3
        probs = rng.random((rows, 10))
        probs /= probs.sum(axis=1, keepdims=True)
        inline.inline((total, total / 2, rows, probs, time.perf_counter()))
        direct.request_succeeded(rows, total, 0.0)
        direct.batch_computed(rows, total / 2)
        direct.predictions(probs)
    assert inline.inline_pending  # the rest waits for a reader
    inline.fold_inline()
    assert not inline.inline_pending
    for m in (inline, direct):
        m.fold_predictions()
    for attr in ("success_stats", "queue_stats", "compute_stats"):
        a, b = getattr(inline, attr), getattr(direct, attr)
        assert a.count == b.count and a.seconds == pytest.approx(b.seconds, rel=1e-12), attr
    assert inline.outcomes == direct.outcomes
    assert (inline.inference_count, inline.execution_count) == (direct.inference_count, direct.execution_count)
    assert {k: (v.count, pytest.approx(v.seconds)) for k, v in inline.batch_stats.items()} == \
        {k: (v.count, v.seconds) for k, v in direct.batch_stats.items()}
    for name in ("request_duration", "queue_duration", "compute_duration", "batch_size", "confidence"):
        (buckets_a, total_a), (buckets_b, total_b) = getattr(inline, name).snapshot(), getattr(direct, name).snapshot()
        assert buckets_a == buckets_b and total_a == pytest.approx(total_b), name
    assert (inline.class_counts == direct.class_counts).all()
    assert abs(inline.last_inference_ms - direct.last_inference_ms) < 1000
