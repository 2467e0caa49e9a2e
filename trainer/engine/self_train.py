"""Offline self-training: bootstrap a teacher on the labels, then `settings.rounds` rounds.

This is what `pseudoserve fit` runs. The supervised bootstrap is also returned as the baseline
the benchmark compares against. After each round the student replaces the teacher only when the
gate promoted it; `on_round(result)` lets the caller write a report per round. When no holdout
is given and `holdout_fraction` > 0, a stratified share of the labels is split off once and never
trained on; with `holdout_fraction` = 0 the gate judges on the labeled set (see `round.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.model_selection import train_test_split

from trainer.engine.models import Classifier
from trainer.engine.round import RoundResult, run_round
from trainer.engine.settings import EngineSettings
from trainer.engine.training import Progress, train_supervised


def split_holdout(X: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Stratified (when every class has 2+ samples) split -> (X_train, y_train), (X_hold, y_hold)."""
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    n_hold = max(1, round(fraction * len(y)))
    if stratify is not None:
        n_hold = max(n_hold, int((counts > 0).sum()))
    if n_hold >= len(y):
        raise ValueError(f"holdout_fraction: {fraction} leaves no labeled sample to train on ({len(y)} labels)")
    X_tr, X_h, y_tr, y_h = train_test_split(X, y, test_size=n_hold, stratify=stratify, random_state=seed)
    return (X_tr, y_tr), (X_h, y_h)


def self_train(X_lab: np.ndarray, y_lab: np.ndarray, X_unlab: np.ndarray,
               holdout: tuple[np.ndarray, np.ndarray] | None, *, n_classes: int, settings: EngineSettings, seed: int,
               progress: Progress | None = None, on_round: Callable[[RoundResult], None] | None = None,
               class_names: list[str] | None = None) -> tuple[Classifier, list[RoundResult], Classifier]:
    """(final model, round results, supervised baseline)."""
    X_lab, y_lab = np.asarray(X_lab, np.float32), np.asarray(y_lab, np.int64)
    if holdout is None and settings.holdout_fraction > 0:
        (X_lab, y_lab), holdout = split_holdout(X_lab, y_lab, settings.holdout_fraction, seed)
    baseline = train_supervised(X_lab, y_lab, n_classes=n_classes, settings=settings, seed=seed, progress=progress)
    teacher = baseline
    results: list[RoundResult] = []
    previous: dict[int, int] | None = None
    pool_ids = np.arange(len(X_unlab))
    for r in range(1, settings.rounds + 1):
        result = run_round(teacher=teacher, teacher_proba=None, labeled=(X_lab, y_lab), unlabeled=X_unlab,
                           holdout=holdout, n_classes=n_classes, round_index=r, previous_pseudo=previous,
                           pool_ids=pool_ids, settings=settings, seed=seed * 1000 + r, progress=progress,
                           class_names=class_names)
        results.append(result)
        previous = result.accepted_map(pool_ids)
        if result.promoted:
            teacher = result.student
        if on_round is not None:
            on_round(result)
    return teacher, results, baseline
