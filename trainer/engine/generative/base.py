"""Common interface and training helpers of the generative models (`generator` setting).

A generator is fitted each round on flattened samples (labeled + pool; the conditional ones on
labeled + pseudo-labeled rows only) and then offers: `ood_scores(X)` (higher = less like the
training data; used by `selection/ood.py`), `sample(n, labels)` (synthetic samples; conditional
generators honour `labels`), and for VAEs `reconstruct(X)` (denoising). Networks are small MLPs
on the flattened input with a linear output and a squared-error likelihood, which suits both
[0, 1] pixels and standardized table features.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

Progress = Callable[[str, int, int], None]


def mlp(sizes: list[int], final_activation: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    if final_activation is not None:
        layers.append(final_activation)
    return nn.Sequential(*layers)


def one_hot(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y.long(), n_classes).float()


class Generator(ABC):
    """A fitted-per-round generative model over samples of `sample_shape`."""

    name: str = ""
    conditional: bool = False

    def __init__(self, sample_shape: tuple[int, ...], n_classes: int, *, latent_size: int, hidden: int,
                 device: torch.device):
        self.sample_shape = tuple(sample_shape)
        self.dim = int(np.prod(sample_shape))
        self.n_classes = n_classes
        self.latent_size = latent_size
        self.hidden = hidden
        self.device = device

    @abstractmethod
    def _step(self, x: torch.Tensor, y: torch.Tensor | None, g: torch.Generator) -> None:
        """One optimisation step on a batch of flattened samples (labels when conditional)."""

    @abstractmethod
    def ood_scores(self, X: np.ndarray) -> np.ndarray:
        """(n,) anomaly scores, higher = more out-of-distribution."""

    @abstractmethod
    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """(n, *sample_shape) float32 synthetic samples."""

    def reconstruct(self, X: np.ndarray) -> np.ndarray | None:
        """Reconstructions (denoised samples), or None when the model cannot reconstruct."""
        return None

    def fit(self, X: np.ndarray, y: np.ndarray | None, *, epochs: int, seed: int, batch_size: int = 128,
            max_steps: int = 4000, progress: Progress | None = None) -> Generator:
        """Train on `X` (n, *sample_shape); conditional generators need `y` (n,) and use rows with y >= 0."""
        X = np.asarray(X, np.float32).reshape(len(X), -1)
        if self.conditional:
            if y is None:
                raise ValueError(f"generator {self.name!r} is conditional and needs labels")
            keep = np.asarray(y) >= 0
            X, y = X[keep], np.asarray(y)[keep]
        if len(X) == 0:
            raise ValueError(f"generator {self.name!r}: no training samples")
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        xs = torch.from_numpy(X).to(self.device)
        ys = torch.from_numpy(np.asarray(y, np.int64)).to(self.device) if self.conditional else None
        steps = int(min(max(epochs * math.ceil(len(xs) / batch_size), 50), max_steps))
        every = max(1, steps // 20)
        for step in range(steps):
            idx = torch.randint(0, len(xs), (min(batch_size, len(xs)),), generator=g).to(self.device)
            self._step(xs[idx], ys[idx] if ys is not None else None, g)
            if progress is not None and ((step + 1) % every == 0 or step + 1 == steps):
                progress(f"generator {self.name}", step + 1, steps)
        return self

    def _flat(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(X, np.float32).reshape(len(X), -1)).to(self.device)

    def _batched(self, X: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], batch: int = 2048) -> np.ndarray:
        out = [fn(self._flat(X[i:i + batch])).detach().cpu().numpy() for i in range(0, len(X), batch)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)
