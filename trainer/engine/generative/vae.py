"""Variational autoencoders: `vae` (Kingma & Welling 2014) and the conditional `cvae` (Sohn et al. 2015).

Encoder and decoder are two-layer MLPs. Out-of-distribution score = per-sample reconstruction
error of the posterior mean (the usual VAE novelty score); the CVAE scores a sample by its best
class, min_c error(x | c), so it needs no label. `reconstruct` returns the decoded posterior mean
(denoising). The CVAE samples the prior with the requested labels, which is how synthetic labeled
samples for under-represented classes are made.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.engine.generative.base import Generator, mlp, one_hot


class VAE(Generator):
    """Unconditional VAE; OOD score = reconstruction error."""

    name = "vae"

    def __init__(self, sample_shape, n_classes, *, latent_size, hidden, device, lr: float = 1e-3):
        super().__init__(sample_shape, n_classes, latent_size=latent_size, hidden=hidden, device=device)
        cond = n_classes if self.conditional else 0
        self.encoder = mlp([self.dim + cond, hidden, hidden, 2 * latent_size]).to(device)
        self.decoder = mlp([latent_size + cond, hidden, hidden, self.dim]).to(device)
        self.opt = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=lr)

    def _cond(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([x, one_hot(y, self.n_classes)], dim=1) if self.conditional else x

    def _recon(self, x: torch.Tensor, y: torch.Tensor | None, g: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        mu, logvar = self.encoder(self._cond(x, y)).chunk(2, dim=1)
        z = mu
        if g is not None:  # reparameterization while training
            z = mu + torch.randn(mu.shape, generator=g).to(mu.device) * torch.exp(0.5 * logvar)
        return self.decoder(self._cond(z, y)), mu, logvar

    def _step(self, x, y, g) -> None:
        self.encoder.train(); self.decoder.train()
        recon, mu, logvar = self._recon(x, y, g)
        rec = ((recon - x) ** 2).sum(dim=1)
        kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(dim=1)
        loss = (rec + kl).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def _error(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        recon, _, _ = self._recon(x, y, None)
        return ((recon - x) ** 2).mean(dim=1)

    @torch.no_grad()
    def ood_scores(self, X: np.ndarray) -> np.ndarray:
        self.encoder.eval(); self.decoder.eval()
        return self._batched(X, lambda x: self._error(x, None)).astype(np.float32)

    @torch.no_grad()
    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        self.encoder.eval(); self.decoder.eval()
        out = self._batched(X, lambda x: self._recon(x, None, None)[0])
        return out.reshape(len(X), *self.sample_shape).astype(np.float32)

    @torch.no_grad()
    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        self.decoder.eval()
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((n, self.latent_size), generator=g).to(self.device)
        y = torch.from_numpy(np.asarray(labels, np.int64)).to(self.device) if self.conditional else None
        return self.decoder(self._cond(z, y)).cpu().numpy().reshape(n, *self.sample_shape).astype(np.float32)


class CVAE(VAE):
    """Label-conditional VAE; OOD score = min over classes of the conditional reconstruction error."""

    name = "cvae"
    conditional = True

    @torch.no_grad()
    def ood_scores(self, X: np.ndarray) -> np.ndarray:
        self.encoder.eval(); self.decoder.eval()

        def best(x: torch.Tensor) -> torch.Tensor:
            errs = [self._error(x, torch.full((len(x),), c, device=x.device)) for c in range(self.n_classes)]
            return torch.stack(errs, dim=1).min(dim=1).values

        return self._batched(X, best).astype(np.float32)

    @torch.no_grad()
    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        self.encoder.eval(); self.decoder.eval()

        def best(x: torch.Tensor) -> torch.Tensor:
            recons = [self._recon(x, torch.full((len(x),), c, device=x.device), None)[0] for c in range(self.n_classes)]
            stack = torch.stack(recons, dim=1)  # (B, C, D)
            err = ((stack - x[:, None]) ** 2).mean(dim=2)
            return stack[torch.arange(len(x)), err.argmin(dim=1)]

        return self._batched(X, best).reshape(len(X), *self.sample_shape).astype(np.float32)

    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        if labels is None or len(labels) != n:
            raise ValueError("cvae.sample: needs one label per sample")
        return super().sample(n, labels, seed)
