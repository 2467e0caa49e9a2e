import numpy as np
import pytest
import torch

from trainer.engine.generative import GENERATORS, build_generator, fit_generator

from .datasets import blobs

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["vae", "cvae", "gan", "cgan"])
def test_each_generator_trains_and_samples(name):
    X, y = blobs(20, dim=6)
    gen = build_generator(name, (6,), 3, latent_size=3, hidden=16, device=CPU)
    gen.fit(X, y, epochs=2, seed=0, max_steps=60)
    labels = np.array([0, 1, 2, 0]) if gen.conditional else None
    assert gen.sample(4, labels, seed=0).shape == (4, 6)
    scores = gen.ood_scores(X)
    assert scores.shape == (60,) and np.isfinite(scores).all()
    if name in ("vae", "cvae"):
        assert gen.reconstruct(X).shape == X.shape
    else:
        assert gen.reconstruct(X) is None


def test_image_generator_shapes():
    gen = build_generator("cvae", (1, 8, 8), 3, latent_size=2, hidden=16, device=CPU)
    gen.fit(np.random.default_rng(0).random((30, 1, 8, 8)), np.arange(30) % 3, epochs=1, seed=0, max_steps=55)
    assert gen.sample(3, np.array([0, 1, 2])).shape == (3, 1, 8, 8)


def test_registry_errors():
    assert build_generator("none", (6,), 3, latent_size=2, hidden=8, device=CPU) is None
    with pytest.raises(ValueError, match="valid: none, vae, cvae, gan, cgan"):
        build_generator("diffusion", (6,), 3, latent_size=2, hidden=8, device=CPU)
    gen = build_generator("cvae", (6,), 3, latent_size=2, hidden=8, device=CPU)
    with pytest.raises(ValueError, match="needs labels"):
        gen.fit(np.zeros((4, 6), np.float32), None, epochs=1, seed=0)
    assert set(GENERATORS) == {"vae", "cvae", "gan", "cgan"}


def test_vae_reconstruction_error_ranks_ood_above_in_distribution():
    # in-distribution: points on a 2-D plane inside 10-D; OOD: points off the plane
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(10, 2)))[0].T  # (2, 10)
    inside = (rng.normal(size=(400, 2)) @ basis).astype(np.float32)
    outside = (rng.normal(size=(40, 10)) * 1.5).astype(np.float32)
    gen = build_generator("vae", (10,), 2, latent_size=2, hidden=32, device=CPU)
    pool = np.concatenate([inside[300:], outside])
    fit_generator(gen, X_lab=inside[:300], y_lab=np.zeros(300, np.int64), X_pool=pool, y_pool=None,
                  policy="trimmed", trim=0.3, epochs=20, seed=0, max_steps=1200)
    scores = gen.ood_scores(pool)
    in_s, out_s = scores[:100], scores[100:]
    # AUROC of the score as an OOD detector
    auroc = (out_s[:, None] > in_s[None, :]).mean()
    assert auroc > 0.95
