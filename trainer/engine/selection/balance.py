"""Class balance of accepted pseudo-labels, aligned to the labeled class prior, with a hard cap.

Pseudo-labels drift toward the classes the teacher finds easy (confirmation bias). Among the
samples that passed the threshold, class c keeps at most `min(slack * prior_c, max_fraction) * n`
of them (n = number that passed; prior = labeled class frequencies), its most confident first;
the rest are refused with reason "balance". A class absent from the labels gets no pseudo-labels.
"""

from __future__ import annotations

import numpy as np


def balance(labels: np.ndarray, confidence: np.ndarray, *, prior: np.ndarray, slack: float,
            max_fraction: float) -> np.ndarray:
    """Boolean keep-mask over the passed samples."""
    n = len(labels)
    quota = np.floor(np.minimum(slack * np.asarray(prior, np.float64), max_fraction) * n + 1e-9).astype(np.int64)
    keep = np.zeros(n, dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[np.argsort(-confidence[members], kind="stable")]
        keep[order[:quota[c]]] = True
    return keep
