"""Out-of-distribution filter: refuse pool samples the generator scores as unlike the labeled data.

The score comes from a generator (`generative/`): the VAE's reconstruction error or the GAN
critic's "fake" probability; higher = more anomalous. The cut is the `quantile` of the scores of
the labeled samples (known in-distribution), so the false-rejection rate on in-distribution data
is about 1 - quantile whatever the score's scale.
"""

from __future__ import annotations

import numpy as np


def ood_reject(pool_scores: np.ndarray, reference_scores: np.ndarray, quantile: float) -> tuple[np.ndarray, float]:
    """(reject-mask over the pool, cut value)."""
    if len(reference_scores) == 0:
        raise ValueError("ood_filter: needs in-distribution reference scores (labeled samples)")
    cut = float(np.quantile(reference_scores, quantile))
    return pool_scores > cut, cut
