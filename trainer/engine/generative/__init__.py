"""Generative models behind a registry (`generator`: none | vae | cvae | gan | cgan).

`build_generator(name, ...)` returns a fresh model, or None for `none`; an unknown name is an
error listing the valid ones. `fit_generator` implements the `ood_fit` policy used by rounds:
fit on labeled data, on labeled + pool, or `trimmed` (fit on labeled + pool, drop the pool's
most anomalous `ood_trim` share, continue training on the rest), so OOD traffic mixed into the
pool does not teach the generator to reconstruct it.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.engine.generative.base import Generator, Progress
from trainer.engine.generative.gan import CGAN, GAN
from trainer.engine.generative.vae import CVAE, VAE

GENERATORS: dict[str, type[Generator]] = {"vae": VAE, "cvae": CVAE, "gan": GAN, "cgan": CGAN}
VALID = ["none", *GENERATORS]

__all__ = ["Generator", "GENERATORS", "build_generator", "fit_generator", "VAE", "CVAE", "GAN", "CGAN"]


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
    half = max(1, epochs // 2)
    gen.fit(X, y, epochs=half, seed=seed, max_steps=max_steps // 2, progress=progress)
    scores = gen.ood_scores(X_pool)
    keep = scores <= np.quantile(scores, 1.0 - trim) if trim > 0 else np.ones(len(X_pool), bool)
    X = np.concatenate([X_lab, X_pool[keep]])
    y = np.concatenate([y_lab, y_pool[keep]])
    return gen.fit(X, y, epochs=half, seed=seed + 1, max_steps=max_steps // 2, progress=progress)
