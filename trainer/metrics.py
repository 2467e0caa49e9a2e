"""Prometheus metric families of the trainer, with the names fixed by docs/architecture.md
(a contract with the Grafana dashboard).

`trainer_metrics(registry)` builds the families once per injected `CollectorRegistry` and returns
the same object to every caller (store, collector, online loop), so the parts of one process
share them and tests can use a fresh registry each.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

POOLS = ("unlabeled", "labeled", "holdout", "feedback", "pseudo_labeled")
EVICTION_REASONS = ("max_samples", "max_bytes", "max_age")
ROUND_OUTCOMES = ("promoted", "rejected", "failed")
PSEUDO_LABEL_REJECT_REASONS = ("threshold", "balance", "ood")


@dataclass(frozen=True)
class TrainerMetrics:
    """All trainer families; `samples`, `evicted`, `rounds`, `pseudo_labels_rejected` and
    `holdout_accuracy` are labeled (pool, reason, outcome, reason, version)."""

    samples: Gauge
    stored: Counter
    duplicates: Counter
    evicted: Counter
    store_bytes: Gauge
    round_duration: Histogram
    rounds: Counter
    pseudo_labels_accepted: Counter
    pseudo_labels_rejected: Counter
    holdout_accuracy: Gauge
    active_version: Gauge


def _build(registry: CollectorRegistry) -> TrainerMetrics:
    m = TrainerMetrics(
        samples=Gauge("pseudoserve_trainer_samples", "Samples in the store by pool", ["pool"], registry=registry),
        stored=Counter("pseudoserve_trainer_stored", "Captured records committed to the store", registry=registry),
        duplicates=Counter("pseudoserve_trainer_duplicates",
                           "Captured records already in the store (resent batches)", registry=registry),
        evicted=Counter("pseudoserve_trainer_evicted", "Samples evicted by retention", ["reason"], registry=registry),
        store_bytes=Gauge("pseudoserve_trainer_store_bytes", "Payload bytes of the samples in the store",
                          registry=registry),
        round_duration=Histogram("pseudoserve_trainer_round_duration_seconds", "Duration of self-training rounds",
                                 buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800), registry=registry),
        rounds=Counter("pseudoserve_trainer_rounds", "Self-training rounds by outcome", ["outcome"], registry=registry),
        pseudo_labels_accepted=Counter("pseudoserve_trainer_pseudo_labels_accepted",
                                       "Pseudo-labels used for training", registry=registry),
        pseudo_labels_rejected=Counter("pseudoserve_trainer_pseudo_labels_rejected",
                                       "Pseudo-labels rejected by reason", ["reason"], registry=registry),
        holdout_accuracy=Gauge("pseudoserve_trainer_holdout_accuracy", "Holdout accuracy by model version",
                               ["version"], registry=registry),
        active_version=Gauge("pseudoserve_trainer_active_version", "Version the service serves", registry=registry),
    )
    # Pre-create the label children so every series exists (at 0) from the first scrape.
    for pool in POOLS:
        m.samples.labels(pool=pool)
    for reason in EVICTION_REASONS:
        m.evicted.labels(reason=reason)
    for outcome in ROUND_OUTCOMES:
        m.rounds.labels(outcome=outcome)
    for reason in PSEUDO_LABEL_REJECT_REASONS:
        m.pseudo_labels_rejected.labels(reason=reason)
    return m


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, TrainerMetrics] = weakref.WeakKeyDictionary()


def trainer_metrics(registry: CollectorRegistry) -> TrainerMetrics:
    """The trainer families registered on `registry`, created on first use."""
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = _build(registry)
        return metrics
