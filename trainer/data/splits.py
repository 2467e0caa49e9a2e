"""The labeled holdout: split off once, stratified, and never trained on.

`stratified_holdout(y, fraction, seed)` returns (train indices, holdout indices). Per class it
holds out round(fraction * count) samples, at least one when the class has two or more samples and
`fraction > 0`, and always leaves at least one sample of every class for training. The split is a
pure function of (y, fraction, seed), so offline runs and the online trainer agree. With
`--holdout FILE` the user gives the holdout instead and no split happens.
"""

from __future__ import annotations

import numpy as np


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, holdout_idx) over `y`, stratified by class."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout_fraction: must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train, hold = [], []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        n_hold = round(fraction * len(idx))
        if fraction > 0 and len(idx) >= 2:
            n_hold = max(n_hold, 1)
        n_hold = min(n_hold, len(idx) - 1)
        hold.append(idx[:n_hold])
        train.append(idx[n_hold:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(hold))


def stratified_subset(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` samples of each class (all of a smaller class)."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == cls))[:per_class] for cls in np.unique(y)]
    return np.sort(np.concatenate(picked))
