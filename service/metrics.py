"""Prometheus metrics of the service, and the per-version counters ModelStatistics reports.

The request path must stay lean, so it never touches a prometheus_client metric (each of those
takes a lock; a request would take about fourteen). Instead each loaded version owns a
`VersionMetrics` of plain counters and append-only observation buffers (`list.append`, no lock:
the event loop is the only writer). `ServiceCollector`, registered on the injected
`CollectorRegistry`, folds the buffers into histogram buckets with numpy when Prometheus scrapes
(or when a buffer grows past `FLUSH_AT`, from the event loop) and exposes the metric families
whose names are a contract with the Grafana dashboard (docs/architecture.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

LATENCY_BUCKETS = (50e-6, 100e-6, 200e-6, 350e-6, 500e-6, 750e-6, 1e-3, 2e-3, 5e-3, 10e-3, 25e-3,
                   50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 2) for i in range(1, 10)) + (0.95, 0.99, 1.0)
FLUSH_AT = 4096  # buffered observations folded from the event loop beyond this many


class BufferedHistogram:
    """A histogram whose `observe` is a bare list append; `snapshot()` folds the buffer."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last = +Inf
        self.total = 0.0
        self.pending: list[float] = []
        self.observe = self.pending.append
        self._lock = threading.Lock()

    def fold(self) -> None:
        with self._lock:
            if not self.pending:
                return
            values = np.asarray(self.pending, dtype=np.float64)
            # the loop may append between these two lines; those values are folded next time
            del self.pending[:len(values)]
            self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"),
                                       minlength=len(self.counts))
            self.total += float(values.sum())

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (le, count) pairs and the sum, as HistogramMetricFamily wants them."""
        self.fold()
        cumulative = np.cumsum(self.counts)
        labels = [_le(b) for b in self.bounds] + ["+Inf"]
        return list(zip(labels, cumulative.tolist())), self.total


def _le(bound: float) -> str:
    return repr(float(bound))


class Duration:
    """A (count, total nanoseconds) pair as ModelStatistics reports it."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)


class VersionMetrics:
    """Counters and observation buffers of one model version (written only by the event loop)."""

    def __init__(self, model: str, version: str, provider: str, class_names: list[str]) -> None:
        self.model = model
        self.version = version
        self.provider = provider
        self.class_names = class_names
        self.outcomes: dict[str, int] = {"success": 0}
        self.request_duration = BufferedHistogram(LATENCY_BUCKETS)
        self.queue_duration = BufferedHistogram(LATENCY_BUCKETS)
        self.compute_duration = BufferedHistogram(LATENCY_BUCKETS)
        self.batch_size = BufferedHistogram(BATCH_BUCKETS)
        self.confidence = BufferedHistogram(CONFIDENCE_BUCKETS)
        self.class_counts = np.zeros(len(class_names) + 1, dtype=np.int64)  # last: out-of-range indices
        self._pending_probs: list[np.ndarray] = []
        self._pending_rows = 0
        self._probs_lock = threading.Lock()
        self.inflight: Callable[[], int] = lambda: 0
        # ModelStatistics
        self.success_stats = Duration()
        self.fail_stats = Duration()
        self.queue_stats = Duration()
        self.compute_stats = Duration()
        self.batch_stats: dict[int, Duration] = {}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def request_succeeded(self, rows: int, total_s: float, queue_s: float) -> None:
        self.outcomes["success"] += 1
        self.request_duration.observe(total_s)
        self.queue_duration.observe(queue_s)
        self.success_stats.add(total_s)
        self.queue_stats.add(queue_s)
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)

    def request_failed(self, outcome: str, total_s: float) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.fail_stats.add(total_s)

    def batch_computed(self, rows: int, compute_s: float) -> None:
        self.compute_duration.observe(compute_s)
        self.batch_size.observe(rows)
        self.compute_stats.add(compute_s)
        self.execution_count += 1
        stats = self.batch_stats.get(rows)
        if stats is None:
            stats = self.batch_stats[rows] = Duration()
        stats.add(compute_s)
        if len(self.request_duration.pending) > FLUSH_AT:
            for histogram in (self.request_duration, self.queue_duration, self.compute_duration, self.batch_size):
                histogram.fold()

    def predictions(self, probabilities: np.ndarray) -> None:
        """Buffer one computed batch of class probabilities (or logits) [rows, classes]."""
        self._pending_probs.append(probabilities)
        self._pending_rows += probabilities.shape[0]
        if self._pending_rows > FLUSH_AT:
            self.fold_predictions()

    def fold_predictions(self) -> None:
        """Top-class confidence and index of the buffered rows (softmax first where rows are
        logits, i.e. do not sum to ~1)."""
        with self._probs_lock:
            pending, self._pending_probs = self._pending_probs, []
            self._pending_rows = 0
            if not pending:
                return
            groups: dict[int, list[np.ndarray]] = {}
            for array in pending:
                groups.setdefault(array.shape[1], []).append(array)
            for arrays in groups.values():
                probs = np.concatenate(arrays).astype(np.float64, copy=False)
                logits = np.abs(probs.sum(axis=1) - 1.0) > 1e-3
                if logits.any():
                    shifted = np.exp(probs[logits] - probs[logits].max(axis=1, keepdims=True))
                    probs = probs.copy()
                    probs[logits] = shifted / shifted.sum(axis=1, keepdims=True)
                self.confidence.pending.extend(probs.max(axis=1).tolist())
                top = np.minimum(probs.argmax(axis=1), len(self.class_names))
                self.class_counts += np.bincount(top, minlength=len(self.class_counts))


class ServiceMetrics:
    """The service's metric state and its Prometheus collector on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._by_version: dict[tuple[str, str], VersionMetrics] = {}  # every version ever loaded
        self.loaded: dict[str, int] = {}  # model -> ready versions
        self.info: dict[int, tuple[str, str, str]] = {}  # id(VersionMetrics) -> (model, version, provider)
        self.unresolved: dict[tuple[str, str], int] = {}  # (model, outcome) of requests with no version
        registry.register(ServiceCollector(self))

    @property
    def versions(self) -> list[VersionMetrics]:
        return list(self._by_version.values())

    def for_version(self, model: str, version: str, provider: str, class_names: list[str]) -> VersionMetrics:
        """The metrics of a model version; a reload of the same version keeps counting on the
        same series unless its classes changed."""
        existing = self._by_version.get((model, version))
        if existing is not None and existing.class_names == class_names and existing.provider == provider:
            return existing
        metrics = self._by_version[(model, version)] = VersionMetrics(model, version, provider, class_names)
        return metrics

    def version_loaded(self, metrics: VersionMetrics) -> None:
        self.info[id(metrics)] = (metrics.model, metrics.version, metrics.provider)

    def version_released(self, metrics: VersionMetrics) -> None:
        self.info.pop(id(metrics), None)

    def set_loaded(self, model: str, count: int) -> None:
        self.loaded[model] = count

    def count_failure(self, model: str, outcome: str) -> None:
        """A request that failed before a version was resolved (unknown model, not ready)."""
        key = (model, outcome)
        self.unresolved[key] = self.unresolved.get(key, 0) + 1


class ServiceCollector:
    """Builds the metric families from `ServiceMetrics` at scrape time."""

    def __init__(self, state: ServiceMetrics) -> None:
        self._state = state

    def describe(self) -> list:
        return []  # families are dynamic; no duplicate-name checks needed

    def collect(self) -> Iterator:
        state = self._state
        versions = state.versions
        requests = CounterMetricFamily("pseudoserve_requests", "Inference requests by outcome",
                                       labels=["model", "version", "outcome"])
        for m in versions:
            for outcome, count in list(m.outcomes.items()):
                requests.add_metric([m.model, m.version, outcome], count)
        for (model, outcome), count in list(state.unresolved.items()):
            requests.add_metric([model, "", outcome], count)
        yield requests
        for name, doc, attr in (
                ("pseudoserve_request_duration_seconds", "Time from request to response", "request_duration"),
                ("pseudoserve_queue_duration_seconds", "Time a request waited for a batch", "queue_duration"),
                ("pseudoserve_compute_duration_seconds", "onnxruntime time per call", "compute_duration"),
                ("pseudoserve_batch_size", "Rows per onnxruntime call", "batch_size")):
            family = HistogramMetricFamily(name, doc, labels=["model", "version"])
            for m in versions:
                buckets, total = getattr(m, attr).snapshot()
                family.add_metric([m.model, m.version], buckets, total)
            yield family
        confidence = HistogramMetricFamily("pseudoserve_prediction_confidence",
                                           "Top-class probability of served predictions", labels=["model", "version"])
        classes = CounterMetricFamily("pseudoserve_predicted_class", "Served predictions by top class",
                                      labels=["model", "version", "class"])
        for m in versions:
            m.fold_predictions()
            buckets, total = m.confidence.snapshot()
            confidence.add_metric([m.model, m.version], buckets, total)
            counts = m.class_counts.tolist()
            for name, count in zip(m.class_names, counts):
                classes.add_metric([m.model, m.version, name], count)
            if counts[-1]:
                classes.add_metric([m.model, m.version, "other"], counts[-1])
        yield confidence
        yield classes
        inflight = GaugeMetricFamily("pseudoserve_inflight_requests", "Requests being served", labels=["model"])
        per_model: dict[str, int] = {}
        for m in versions:
            per_model[m.model] = per_model.get(m.model, 0) + m.inflight()
        for model, count in sorted(per_model.items()):
            inflight.add_metric([model], count)
        yield inflight
        loaded = GaugeMetricFamily("pseudoserve_loaded_versions", "Ready versions", labels=["model"])
        for model, count in sorted(state.loaded.items()):
            loaded.add_metric([model], count)
        yield loaded
        info = GaugeMetricFamily("pseudoserve_model_info", "1 per loaded version, with its execution provider",
                                 labels=["model", "version", "provider"])
        for model, version, provider in sorted(set(state.info.values())):
            info.add_metric([model, version, provider], 1)
        yield info
