"""Prometheus metrics of the service on an injected `CollectorRegistry`, and the per-version
counters ModelStatistics reports.

Metric names are a contract with the Grafana dashboard (docs/architecture.md). The request path
never looks a label set up: `ServiceMetrics.for_version` binds every child once, when a version is
loaded, and `VersionMetrics` holds them together with the protocol's statistics counters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (50e-6, 100e-6, 200e-6, 350e-6, 500e-6, 750e-6, 1e-3, 2e-3, 5e-3, 10e-3, 25e-3,
                   50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 2) for i in range(1, 10)) + (0.95, 0.99, 1.0)


class ServiceMetrics:
    """All service metric families, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("pseudoserve_requests", "Inference requests by outcome",
                                ["model", "version", "outcome"], registry=registry)
        self.request_duration = Histogram("pseudoserve_request_duration_seconds", "Time from request to response",
                                          ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_duration = Histogram("pseudoserve_queue_duration_seconds", "Time a request waited for a batch",
                                        ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.compute_duration = Histogram("pseudoserve_compute_duration_seconds", "onnxruntime time per call",
                                          ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("pseudoserve_batch_size", "Rows per onnxruntime call",
                                    ["model", "version"], buckets=BATCH_BUCKETS, registry=registry)
        self.inflight = Gauge("pseudoserve_inflight_requests", "Requests being served", ["model"], registry=registry)
        self.loaded_versions = Gauge("pseudoserve_loaded_versions", "Ready versions", ["model"], registry=registry)
        self.model_info = Gauge("pseudoserve_model_info", "1 per loaded version, with its execution provider",
                                ["model", "version", "provider"], registry=registry)
        self.confidence = Histogram("pseudoserve_prediction_confidence", "Top-class probability of served predictions",
                                    ["model", "version"], buckets=CONFIDENCE_BUCKETS, registry=registry)
        self.predicted_class = Counter("pseudoserve_predicted_class", "Served predictions by top class",
                                       ["model", "version", "class"], registry=registry)

    def count_failure(self, model: str, version: str, outcome: str) -> None:
        """Count a request that failed before a version was resolved (or outside VersionMetrics)."""
        self.requests.labels(model, version, outcome).inc()

    def for_version(self, model: str, version: str, provider: str, class_names: list[str]) -> VersionMetrics:
        """Bind every child of one loaded version."""
        self.model_info.labels(model, version, provider).set(1)
        return VersionMetrics(
            service=self, model=model, version=version, provider=provider,
            success=self.requests.labels(model, version, "success"),
            request_duration=self.request_duration.labels(model, version),
            queue_duration=self.queue_duration.labels(model, version),
            compute_duration=self.compute_duration.labels(model, version),
            batch_size=self.batch_size.labels(model, version),
            inflight=self.inflight.labels(model),
            confidence=self.confidence.labels(model, version),
            classes=[self.predicted_class.labels(model, version, name) for name in class_names],
        )

    def remove_version(self, metrics: VersionMetrics) -> None:
        """Drop the info series of an unloaded version (its counters stay, as Prometheus expects)."""
        try:
            self.model_info.remove(metrics.model, metrics.version, metrics.provider)
        except KeyError:
            pass


@dataclass
class Duration:
    """A (count, total nanoseconds) pair as ModelStatistics reports it."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class VersionMetrics:
    """Pre-bound metric children and ModelStatistics counters of one model version."""

    service: ServiceMetrics
    model: str
    version: str
    provider: str
    success: object
    request_duration: object
    queue_duration: object
    compute_duration: object
    batch_size: object
    inflight: object
    confidence: object
    classes: list
    failures: dict[str, object] = field(default_factory=dict)
    # ModelStatistics
    success_stats: Duration = field(default_factory=Duration)
    fail_stats: Duration = field(default_factory=Duration)
    queue_stats: Duration = field(default_factory=Duration)
    compute_stats: Duration = field(default_factory=Duration)
    batch_stats: dict[int, Duration] = field(default_factory=dict)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0

    def request_succeeded(self, rows: int, total_s: float, queue_s: float) -> None:
        self.success.inc()
        self.request_duration.observe(total_s)
        self.queue_duration.observe(queue_s)
        self.success_stats.add(total_s)
        self.queue_stats.add(queue_s)
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)

    def request_failed(self, outcome: str, total_s: float) -> None:
        child = self.failures.get(outcome)
        if child is None:
            child = self.failures[outcome] = self.service.requests.labels(self.model, self.version, outcome)
        child.inc()
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

    def predictions(self, confidences, classes) -> None:
        """Record top-class probabilities and indices of one computed batch."""
        observe = self.confidence.observe
        names = self.classes
        for conf, cls in zip(confidences.tolist(), classes.tolist()):
            observe(conf)
            if cls < len(names):
                names[cls].inc()
