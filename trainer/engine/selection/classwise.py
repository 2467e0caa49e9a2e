"""FlexMatch class-wise adaptive thresholds (Zhang et al. 2021).

A class the model is still learning gets a lower threshold so it is not starved of pseudo-labels.
Learning effect sigma_c = number of pool samples predicted c above the base threshold;
beta_c = sigma_c / max(max_c sigma_c, n_unused) (the warm-up form: samples above no threshold
count as "unused"); T_c = M(beta_c) * base with the convex mapping M(x) = x / (2 - x). Thresholds
are clipped to [0.5, base] so the selection stays in the engine's [0.5, 0.99] band.
"""

from __future__ import annotations

import numpy as np


def classwise_thresholds(confidence: np.ndarray, labels: np.ndarray, *, base: float, n_classes: int) -> np.ndarray:
    """Per-class thresholds `(n_classes,)` from this round's pool confidences and predicted labels."""
    above = confidence >= base
    sigma = np.bincount(labels[above], minlength=n_classes).astype(np.float64)
    unused = float((~above).sum())
    denom = max(sigma.max(initial=0.0), unused, 1.0)
    beta = sigma / denom
    return np.clip(beta / (2.0 - beta) * base, 0.5, base)
