"""Holdout metrics and round diagnostics: accuracy, per-class P/R/F1, confusion, ECE, agreement, stability.

`evaluate` is called by `round.py` on teacher and student holdout probabilities; `gate.py`
compares the two `Evaluation`s; reports and Prometheus gauges read `to_dict()`. Precision,
recall, F1 and the confusion matrix come from scikit-learn with every class listed, so a class
absent from a tiny holdout still has a row (support 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - mean confidence| x bin share."""
    if len(y) == 0:
        return 0.0
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


@dataclass
class Evaluation:
    """Holdout metrics of one model; per-class arrays are indexed by class id."""

    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray  # (n_classes, n_classes), rows = true class
    ece: float
    n: int

    @property
    def per_class(self) -> dict[str, np.ndarray]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support}

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "ece": self.ece, "n": self.n,
                "precision": self.precision.tolist(), "recall": self.recall.tolist(), "f1": self.f1.tolist(),
                "support": self.support.tolist(), "confusion": self.confusion.tolist()}


def evaluate(proba: np.ndarray, y: np.ndarray, n_classes: int) -> Evaluation:
    """Metrics of probabilities `(n, n_classes)` against labels `y`."""
    proba = np.asarray(proba)
    y = np.asarray(y, dtype=np.int64)
    if proba.shape != (len(y), n_classes):
        raise ValueError(f"proba: expected shape ({len(y)}, {n_classes}), got {proba.shape}")
    labels = np.arange(n_classes)
    pred = proba.argmax(axis=1) if len(y) else np.zeros(0, np.int64)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return Evaluation(accuracy=float((pred == y).mean()) if len(y) else 0.0, precision=p, recall=r, f1=f, support=s,
                      confusion=confusion_matrix(y, pred, labels=labels), ece=expected_calibration_error(proba, y),
                      n=len(y))


def agreement(teacher_proba: np.ndarray, student_proba: np.ndarray) -> float:
    """Share of pool samples on which teacher and student predict the same class."""
    if len(teacher_proba) == 0:
        return 1.0
    return float((teacher_proba.argmax(axis=1) == student_proba.argmax(axis=1)).mean())


def stability(previous: dict[int, int] | None, pool_ids: np.ndarray | None, accepted_idx: np.ndarray,
              labels: np.ndarray) -> float | None:
    """Share of this round's accepted pseudo-labels whose sample had the same label last round.

    `previous` maps sample id -> label accepted last round; only samples accepted in both rounds
    count. None when there is no previous round or no overlap.
    """
    if not previous or len(accepted_idx) == 0:
        return None
    ids = pool_ids if pool_ids is not None else np.arange(int(accepted_idx.max()) + 1)
    same = [previous[int(ids[i])] == int(lab) for i, lab in zip(accepted_idx, labels) if int(ids[i]) in previous]
    return float(np.mean(same)) if same else None
