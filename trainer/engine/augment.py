"""Input augmentation for training noise, chosen by sample shape, behind a small registry.

Used by `training.py` on every mini-batch (the Noisy-Student "input noise") and by the teacher's
augmentation-averaged predictions in `round.py`. Each augmenter has a `weak` view (a plausible
variant of the sample: small shift/rotation/scale for images; light gaussian corruption and
feature masking for standardized table features) and a `strong` view (larger affine, cutout and
noise / heavier masking) for the FixMatch consistency term. All ops are batched torch ops on the
training device and take an explicit `torch.Generator` so a seed reproduces a run.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F


class Augmenter(Protocol):
    def weak(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor: ...
    def strong(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor: ...


def _rand(n: int, g: torch.Generator, device: torch.device, *shape: int) -> torch.Tensor:
    """Uniform [-1, 1) drawn on CPU from `g` (reproducible across devices), moved to `device`."""
    return (torch.rand((n, *shape), generator=g) * 2 - 1).to(device)


class ImageAugmenter:
    """Random affine (rotation, scale, translation) with zero padding; strong adds cutout and noise."""

    def __init__(self, strength: float, image_size: int):
        self.strength = strength
        # one pixel on 8x8 digits, two on 28x28 MNIST, in normalized grid units (2 = full width)
        self.shift = 2.0 * strength * max(1.0, image_size / 14) / image_size
        self.image_size = image_size

    def _affine(self, x: torch.Tensor, g: torch.Generator, rot_deg: float, scale: float, shift: float) -> torch.Tensor:
        n = x.shape[0]
        angle = _rand(n, g, x.device) * rot_deg * math.pi / 180
        s = 1 + _rand(n, g, x.device) * scale
        t = _rand(n, g, x.device, 2) * shift
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = torch.cos(angle) / s
        theta[:, 0, 1] = -torch.sin(angle) / s
        theta[:, 1, 0] = torch.sin(angle) / s
        theta[:, 1, 1] = torch.cos(angle) / s
        theta[:, :, 2] = t
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")

    def weak(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.strength == 0:
            return x
        return self._affine(x, g, 8 * self.strength, 0.05 * self.strength, self.shift)

    def strong(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self._affine(x, g, 25.0, 0.2, 2 * self.shift)
        n, _, h, w = x.shape
        half = max(1, h // 6)  # cutout square of side ~h/3
        cy = ((_rand(n, g, x.device) + 1) / 2 * h).long()
        cx = ((_rand(n, g, x.device) + 1) / 2 * w).long()
        rows = torch.arange(h, device=x.device)[None, :, None]
        cols = torch.arange(w, device=x.device)[None, None, :]
        hole = ((rows - cy[:, None, None]).abs() <= half) & ((cols - cx[:, None, None]).abs() <= half)
        x = x * (~hole)[:, None].to(x.dtype)
        noise = torch.randn(x.shape, generator=g).to(x.device)
        return x + 0.1 * noise * x.detach().abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


class TableAugmenter:
    """Gaussian corruption plus random feature masking (masked features set to 0, the standardized mean)."""

    def __init__(self, strength: float):
        self.strength = strength

    def _corrupt(self, x: torch.Tensor, g: torch.Generator, noise: float, mask: float) -> torch.Tensor:
        keep = (torch.rand(x.shape, generator=g) >= mask).to(x.device, x.dtype)
        return x * keep + noise * torch.randn(x.shape, generator=g).to(x.device, x.dtype)

    def weak(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.strength == 0:
            return x
        return self._corrupt(x, g, 0.1 * self.strength, 0.1 * self.strength)

    def strong(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self._corrupt(x, g, 0.3, 0.3)


class NoAugmenter:
    """Identity, for `augment=False`."""

    def weak(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x

    def strong(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x


def augmenter_for(sample_shape: tuple[int, ...], *, enabled: bool, strength: float) -> Augmenter:
    """Image augmenter for `(C, H, W)` samples, table augmenter for vectors, identity when disabled."""
    if not enabled:
        return NoAugmenter()
    if len(sample_shape) == 3:
        return ImageAugmenter(strength, int(min(sample_shape[1:])))
    return TableAugmenter(strength)
