"""Generative adversarial networks: `gan` (Goodfellow et al. 2014) and the conditional `cgan` (Mirza & Osindero 2014).

MLP generator and critic, non-saturating loss, Adam(2e-4, beta1=0.5). The critic's probability
that a sample is fake, 1 - D(x), is the out-of-distribution score (the CGAN takes its best
class, min_c (1 - D(x, c))). The CGAN samples with requested labels for synthetic data. A GAN
cannot reconstruct, so `denoise` needs a VAE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainer.engine.generative.base import Generator, mlp, one_hot


class GAN(Generator):
    """Unconditional GAN; OOD score = critic's fake probability."""

    name = "gan"

    def __init__(self, sample_shape, n_classes, *, latent_size, hidden, device, lr: float = 2e-4):
        super().__init__(sample_shape, n_classes, latent_size=latent_size, hidden=hidden, device=device)
        cond = n_classes if self.conditional else 0
        self.gen = mlp([latent_size + cond, hidden, hidden, self.dim]).to(device)
        self.critic = mlp([self.dim + cond, hidden, hidden, 1]).to(device)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=(0.5, 0.999))

    def _cond(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([x, one_hot(y, self.n_classes)], dim=1) if self.conditional else x

    def _step(self, x, y, g) -> None:
        n = len(x)
        z = torch.randn((n, self.latent_size), generator=g).to(self.device)
        fake = self.gen(self._cond(z, y))
        real_logit = self.critic(self._cond(x, y))
        fake_logit = self.critic(self._cond(fake.detach(), y))
        loss_d = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                  + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        gen_logit = self.critic(self._cond(fake, y))
        loss_g = F.binary_cross_entropy_with_logits(gen_logit, torch.ones_like(gen_logit))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

    @torch.no_grad()
    def ood_scores(self, X: np.ndarray) -> np.ndarray:
        return self._batched(X, lambda x: 1 - torch.sigmoid(self.critic(x)).squeeze(1)).astype(np.float32)

    @torch.no_grad()
    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((n, self.latent_size), generator=g).to(self.device)
        y = torch.from_numpy(np.asarray(labels, np.int64)).to(self.device) if self.conditional else None
        return self.gen(self._cond(z, y)).cpu().numpy().reshape(n, *self.sample_shape).astype(np.float32)


class CGAN(GAN):
    """Label-conditional GAN; OOD score = min over classes of the critic's fake probability."""

    name = "cgan"
    conditional = True

    @torch.no_grad()
    def ood_scores(self, X: np.ndarray) -> np.ndarray:
        def best(x: torch.Tensor) -> torch.Tensor:
            scores = [1 - torch.sigmoid(self.critic(self._cond(x, torch.full((len(x),), c, device=x.device)))).squeeze(1)
                      for c in range(self.n_classes)]
            return torch.stack(scores, dim=1).min(dim=1).values

        return self._batched(X, best).astype(np.float32)

    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        if labels is None or len(labels) != n:
            raise ValueError("cgan.sample: needs one label per sample")
        return super().sample(n, labels, seed)
