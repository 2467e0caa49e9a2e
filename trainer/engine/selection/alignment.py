"""Distribution alignment (ReMixMatch, Berthelot et al. 2020).

The teacher's pool probabilities are multiplied per class by prior_c / mean_c(proba) and
renormalized, so their average matches the labeled class prior. It counters the drift of
pseudo-labels toward a few classes before any threshold is applied.
"""

from __future__ import annotations

import numpy as np


def align_distribution(proba: np.ndarray, prior: np.ndarray) -> np.ndarray:
    if len(proba) == 0:
        return proba
    mean = proba.mean(axis=0).clip(1e-6)
    aligned = proba * (np.asarray(prior) / mean)[None, :]
    return (aligned / aligned.sum(axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
