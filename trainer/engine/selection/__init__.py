"""Pseudo-label selection: who gets a label, which label, and why the others were refused.

`select_pseudo_labels` is what a round calls after a labeler (`labelers.py`) has turned the
teacher's view of the pool into class probabilities and confidences. It applies, in order:
the out-of-distribution filter (`ood.py`, reason "ood"), the confidence threshold of this round
(`schedules.py`: linear high -> low or percentile curriculum, optionally FlexMatch class-wise
thresholds from `classwise.py`; reason "threshold") and class balance against the labeled prior
with a per-class cap (`balance.py`; reason "balance"). Each policy is a small pure function on
numpy arrays, tested on constructed probability arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.engine.selection.alignment import align_distribution
from trainer.engine.selection.balance import balance
from trainer.engine.selection.classwise import classwise_thresholds
from trainer.engine.selection.labelers import LABELERS, get_labeler
from trainer.engine.selection.ood import ood_reject
from trainer.engine.selection.schedules import SCHEDULES, get_schedule
from trainer.engine.settings import EngineSettings

__all__ = [
    "LABELERS",
    "SCHEDULES",
    "Selection",
    "align_distribution",
    "balance",
    "classwise_thresholds",
    "get_labeler",
    "get_schedule",
    "ood_reject",
    "select_pseudo_labels",
]


@dataclass
class Selection:
    """Outcome over the pool: accepted indices with labels/confidences, and a reason per refusal."""

    accepted_idx: np.ndarray
    labels: np.ndarray
    confidences: np.ndarray
    threshold: float | np.ndarray
    rejected_reason: np.ndarray  # per pool sample: "" accepted, else "ood" | "threshold" | "balance"

    @property
    def rejected(self) -> dict[str, int]:
        return {r: int((self.rejected_reason == r).sum()) for r in ("threshold", "balance", "ood")}


def select_pseudo_labels(proba: np.ndarray, confidence: np.ndarray, *, round_index: int, settings: EngineSettings,
                         prior: np.ndarray, ood_mask: np.ndarray | None = None) -> Selection:
    """Apply OOD filter, threshold (schedule, class-wise) and class balance to the pool's proposals."""
    n = len(proba)
    labels = proba.argmax(axis=1) if n else np.zeros(0, np.int64)
    reason = np.full(n, "", dtype=object)
    if ood_mask is not None:
        reason[ood_mask] = "ood"
    candidates = reason == ""
    threshold: float | np.ndarray = get_schedule(settings.threshold_schedule)(
        confidence[candidates], round_index=round_index, settings=settings)
    per_sample = np.full(n, float(threshold))
    if settings.classwise_thresholds:
        threshold = classwise_thresholds(confidence[candidates], labels[candidates], base=float(threshold),
                                         n_classes=proba.shape[1])
        per_sample = threshold[labels]
    reason[candidates & (confidence < per_sample)] = "threshold"
    passed = np.flatnonzero(reason == "")
    if settings.class_balance and len(passed):
        keep = balance(labels[passed], confidence[passed], prior=prior, slack=settings.balance_slack,
                       max_fraction=settings.max_class_fraction)
        reason[passed[~keep]] = "balance"
    accepted = np.flatnonzero(reason == "")
    return Selection(accepted_idx=accepted, labels=labels[accepted].astype(np.int64),
                     confidences=confidence[accepted].astype(np.float32), threshold=threshold,
                     rejected_reason=reason.astype(str))
