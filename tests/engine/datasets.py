"""Tiny constructed datasets for the engine tests."""

import numpy as np


def blobs(n_per_class: int, n_classes: int = 3, dim: int = 6, seed: int = 0, spread: float = 0.4):
    """Well separated gaussian blobs: (X float32, y int64)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centers[y] + rng.normal(0, spread, size=(len(y), dim))
    return X.astype(np.float32), y.astype(np.int64)


def bar_images(n_per_class: int = 30, seed: int = 1):
    """(n, 1, 8, 8) images of 3 classes: a bar in a class-specific position, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    X = rng.uniform(0, 0.1, size=(len(y), 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        if c == 0:
            X[i, 0, 2:6, 3:5] = 1.0  # vertical bar
        elif c == 1:
            X[i, 0, 3:5, 2:6] = 1.0  # horizontal bar
        else:
            X[i, 0, 1:3, 1:3] = X[i, 0, 5:7, 5:7] = 1.0  # two squares
    return X, y.astype(np.int64)
