"""Classifier networks (an MLP for vectors, a small CNN for images) and the `Classifier` wrapper.

`build_network(arch)` rebuilds a network from its constructor arguments (`arch`), which is what a
`model.pt` checkpoint stores beside the weights, so the online trainer can load the served model
as the teacher (student-from-teacher) and the export helper can trace it to ONNX. Every network
returns logits `(B, n_classes)` from `forward(x)` and its penultimate features `(B, D)` from
`embed(x)`; the graph pseudo-labeler builds its kNN graph on those features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected classifier for vectors `(B, d)`: [Linear-BN-ReLU] per hidden size, dropout, head."""

    def __init__(self, in_features: int, n_classes: int, hidden_sizes: list[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


class SmallCNN(nn.Module):
    """Convolutional classifier for images `(B, C, H, W)`.

    Each stage is two 3x3 conv-BN-ReLU; a 2x2 max-pool follows a stage while the map is at least
    8 pixels wide (8x8 digits: one pool; 28x28 MNIST with three stages: 28 -> 14 -> 7). Global
    average pooling then gives the embedding, so any input size works.
    """

    def __init__(self, in_channels: int, n_classes: int, channels: list[int], dropout: float, image_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        width, size = in_channels, image_size
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(channels) - 1 and size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            width = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, channels[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


def architecture(sample_shape: tuple[int, ...], n_classes: int, *, classifier: str, hidden_sizes: list[int],
                 cnn_channels: list[int], dropout: float) -> dict:
    """Constructor arguments for the network suited to `sample_shape` (`classifier` = auto|mlp|cnn)."""
    kind = classifier
    if kind == "auto":
        kind = "cnn" if len(sample_shape) == 3 else "mlp"
    if kind == "cnn":
        if len(sample_shape) != 3:
            raise ValueError(f"classifier: 'cnn' needs image samples (C, H, W), got sample shape {sample_shape}")
        return {"kind": "cnn", "in_channels": int(sample_shape[0]), "n_classes": n_classes,
                "channels": list(cnn_channels), "dropout": dropout, "image_size": int(min(sample_shape[1:]))}
    if kind == "mlp":
        return {"kind": "mlp", "in_features": int(np.prod(sample_shape)), "n_classes": n_classes,
                "hidden_sizes": list(hidden_sizes), "dropout": dropout}
    raise ValueError(f"classifier: unknown {classifier!r}; valid: auto, mlp, cnn")


def build_network(arch: dict) -> nn.Module:
    """A fresh network from `architecture(...)`'s dict."""
    args = {k: v for k, v in arch.items() if k != "kind"}
    return SmallCNN(**args) if arch["kind"] == "cnn" else MLP(**args)


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(device)


@dataclass
class Classifier:
    """A trained torch classifier on preprocessed input; `module(x)` returns logits `(n, n_classes)`."""

    module: nn.Module
    sample_shape: tuple[int, ...]
    n_classes: int
    arch: dict
    batch_size: int = 1024
    info: dict = field(default_factory=dict)

    def _device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _batches(self, X: np.ndarray, fn) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.shape[1:] != tuple(self.sample_shape):
            raise ValueError(f"input: expected samples of shape {tuple(self.sample_shape)}, got {X.shape[1:]}")
        was_training = self.module.training
        self.module.eval()
        device = self._device()
        out = []
        with torch.no_grad():
            for i in range(0, len(X), self.batch_size):
                out.append(fn(torch.from_numpy(X[i:i + self.batch_size]).to(device)).float().cpu().numpy())
        self.module.train(was_training)
        if not out:
            return np.zeros((0, self.n_classes), np.float32)
        return np.concatenate(out)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax probabilities `(n, n_classes)` float32, eval mode, batched, no grad."""
        return self._batches(X, lambda x: torch.softmax(self.module(x), dim=1)).astype(np.float32)

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Penultimate features `(n, D)` float32 (the graph pseudo-labeler's space)."""
        return self._batches(X, self.module.embed).astype(np.float32)

    def state(self) -> dict:
        """Checkpoint dict (CPU tensors): arch, sample shape, classes and weights."""
        return {"arch": dict(self.arch), "sample_shape": list(self.sample_shape), "n_classes": self.n_classes,
                "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "info": dict(self.info)}

    @classmethod
    def from_state(cls, state: dict, device: str = "cpu") -> Classifier:
        """Rebuild from `state()` (e.g. a `model.pt` checkpoint)."""
        module = build_network(state["arch"])
        module.load_state_dict(state["state_dict"])
        module.to(resolve_device(device)).eval()
        return cls(module=module, sample_shape=tuple(state["sample_shape"]), n_classes=int(state["n_classes"]),
                   arch=dict(state["arch"]), info=dict(state.get("info", {})))
