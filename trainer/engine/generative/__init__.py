"""Generative models behind a registry (`generator`: none | vae | cvae | gan | cgan).

`build_generator(name, ...)` returns a fresh model, or None for `none`; an unknown name is an
error listing the valid ones. `fit_generator` implements the `ood_fit` policy used by rounds:
fit on labeled data, on labeled + pool, or `trimmed`: fit on the labels first, then continue on
labels + the pool samples that first model scores below the `1 - ood_trim` quantile of the
labels' scores. A generator fitted on a pool that contains OOD traffic learns to reconstruct it
(bench/ood_mnist.py: 29 % of notMNIST letters rejected after fitting on everything, vs 95 %
after fitting on the labels), so the pool only enters once it has been screened.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.engine.generative.base import Generator, Progress
from trainer.engine.generative.gan import CGAN, GAN
from trainer.engine.generative.vae import CVAE, VAE

GENERATORS: dict[str, type[Generator]] = {"vae": VAE, "cvae": CVAE, "gan": GAN, "cgan": CGAN}
VALID = ["none", *GENERATORS]

__all__ = ["CGAN", "CVAE", "GAN", "GENERATORS", "VAE", "Generator", "build_generator", "fit_generator"]


def build_generator(name: str, sample_shape: tuple[int, ...], n_classes: int, *, latent_size: int, hidden: int,
                    device: torch.device) -> Generator | None:
    if name == "none":
        return None
    try:
        cls = GENERATORS[name]
    except KeyError:
        raise ValueError(f"generator: unknown {name!r}; valid: {', '.join(VALID)}") from None
    return cls(sample_shape, n_classes, latent_size=latent_size, hidden=hidden, device=device)


def fit_generator(gen: Generator, *, X_lab: np.ndarray, y_lab: np.ndarray, X_pool: np.ndarray,
                  y_pool: np.ndarray | None, policy: str, trim: float, epochs: int, seed: int, max_steps: int,
                  progress: Progress | None = None) -> Generator:
    """Fit `gen` per the `ood_fit` policy; `y_pool` are pseudo-labels (-1 = none) for conditional models."""
    y_pool = np.full(len(X_pool), -1, np.int64) if y_pool is None else y_pool
    if policy == "labeled" or len(X_pool) == 0:
        return gen.fit(X_lab, y_lab, epochs=epochs, seed=seed, max_steps=max_steps, progress=progress)
    X = np.concatenate([X_lab, X_pool])
    y = np.concatenate([y_lab, y_pool])
    if policy == "all":
        return gen.fit(X, y, epochs=epochs, seed=seed, max_steps=max_steps, progress=progress)
    if policy != "trimmed":
        raise ValueError(f"ood_fit: unknown {policy!r}; valid: labeled, all, trimmed")
    # stage 1 on the labels alone (known in-distribution); stage 2 adds the pool samples that
    # stage 1 finds in-distribution (score <= its `1 - trim` quantile on the labels)
    gen.fit(X_lab, y_lab, epochs=epochs, seed=seed, max_steps=max_steps // 2, progress=progress)
    cut = np.quantile(gen.ood_scores(X_lab), 1.0 - trim) if trim > 0 else np.inf
    keep = gen.ood_scores(X_pool) <= cut
    X = np.concatenate([X_lab, X_pool[keep]])
    y = np.concatenate([y_lab, y_pool[keep]])
    return gen.fit(X, y, epochs=epochs, seed=seed + 1, max_steps=max_steps // 2, progress=progress)
