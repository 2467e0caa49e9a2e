"""Shared fixtures (tiny datasets, fast settings) for the engine tests.

Guard: test packages under tests/ put `tests/` on sys.path (pytest's rootdir insertion), which
makes the folder tests/triton importable as a namespace package named `triton`. torch takes any
importable `triton` for the GPU compiler and fails inside torch.optim / torch._dynamo. No real
`triton` package exists in this CPU environment, so a `triton` that resolves to a folder without
a file origin is masked for this test process.
"""

import importlib.util
import sys

_spec = importlib.util.find_spec("triton") if "triton" not in sys.modules else None
if _spec is not None and _spec.origin in (None, "namespace"):
    sys.modules["triton"] = None  # type: ignore[assignment]

import pytest
import torch

from trainer.engine import EngineSettings

from .datasets import bar_images


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def fast_settings() -> EngineSettings:
    return EngineSettings(epochs=2, min_steps=60, max_steps=80, batch_size=32, hidden_sizes=[32], cnn_channels=[8, 16],
                          generator_epochs=2, generator_hidden=32, latent_size=4, rounds=2, teacher_augmentations=1,
                          device="cpu")


@pytest.fixture
def tiny_images():
    return bar_images()
