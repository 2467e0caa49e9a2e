"""The torch twin of `Preprocessor.transform`, placed in front of the classifier in the exported
ONNX graph so that the service takes raw features (categories as codes, NaN for missing).

Kept apart from `preprocess` so that loading data never imports torch. Only ONNX-friendly ops
(isnan, where, comparisons, round, gather, concat) with constants stored as buffers.
"""

from __future__ import annotations

import torch
from torch import nn


class PreprocessModule(nn.Module):
    """Impute, scale and one-hot encode an encoded FP32 batch: (B, d_raw) -> (B, d_model), or
    (B, C, H, W) -> (B, C, H, W) for images."""

    def __init__(self, pre) -> None:  # pre: trainer.data.preprocess.Preprocessor (fitted)
        super().__init__()
        self.image = pre.kind == "image"
        f32 = torch.float32
        self.register_buffer("fill", torch.tensor(pre.fill, dtype=f32))
        self.register_buffer("center", torch.tensor(pre.center, dtype=f32))
        self.register_buffer("scale", torch.tensor(pre.scale, dtype=f32))
        self.register_buffer("numeric", torch.tensor(pre.numeric, dtype=torch.long))
        self.categorical = [int(j) for j in pre.categorical]
        self.sizes = [len(c) for c in pre.categories]
        self.modes = [float(m) for m in pre.mode]
        self.clip = float(pre.clip)
        for k, size in enumerate(self.sizes):
            self.register_buffer(f"codes{k}", torch.arange(size, dtype=f32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image:
            x = torch.where(torch.isnan(x), self.fill, x)
            return (x - self.center) / self.scale
        parts = []
        if self.numeric.numel():
            num = torch.index_select(x, 1, self.numeric)  # (B, n_numeric)
            num = torch.where(torch.isnan(num), self.fill, num)
            num = (num - self.center) / self.scale
            if self.clip > 0:
                num = torch.clamp(num, -self.clip, self.clip)
            parts.append(num)
        for k, (j, size, mode) in enumerate(zip(self.categorical, self.sizes, self.modes)):
            code = x[:, j:j + 1]  # (B, 1); NaN fails both comparisons, so it counts as invalid
            valid = (code >= -0.5) & (code < size - 0.5)
            code = torch.where(valid, torch.round(code), torch.full_like(code, mode))
            parts.append((code == getattr(self, f"codes{k}")).to(x.dtype))  # (B, size)
        return torch.cat(parts, dim=1)
