"""Benchmark: can the VAE/GAN out-of-distribution filter reject notMNIST letters mixed into MNIST traffic?

The generator is fitted the way a round fits it (`fit_generator`, policy `--ood-fit`) on the
labeled digits plus a pool in which `--ood-share` of the samples are notMNIST letters; the cut is
the `--quantile` of the labeled digits' scores (selection/ood.py). Reported: share of letters
rejected, share of pool digits wrongly rejected, and the AUROC of the score. Pixels / 255.

    .venv/bin/python bench/ood_mnist.py --generator vae
    .venv/bin/python bench/ood_mnist.py --generator gan --pool 3000
Data: ../shared/data (or --data / $PSEUDOSERVE_DATA), IDX gz files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("PSEUDOSERVE_DATA", Path(__file__).resolve().parents[2] / "shared/data")))
    parser.add_argument("--generator", default="vae", choices=["vae", "cvae", "gan", "cgan"])
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--pool", type=int, default=5000)
    parser.add_argument("--ood-share", type=float, default=0.3)
    parser.add_argument("--ood-fit", default="trimmed", choices=["labeled", "all", "trimmed"])
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--trim", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from trainer.engine.generative import build_generator, fit_generator
    from trainer.engine.selection import ood_reject

    torch.set_num_threads(args.threads)
    if not (args.data / "mnist").exists():
        raise SystemExit(f"{args.data}/mnist not found: pass --data or set PSEUDOSERVE_DATA")
    rng = np.random.default_rng(args.seed)
    X = read_idx(args.data / "mnist/train-images-idx3-ubyte.gz")
    y = read_idx(args.data / "mnist/train-labels-idx1-ubyte.gz").astype(np.int64)
    letters = read_idx(args.data / "notmnist/t10k-images-idx3-ubyte.gz")
    order = rng.permutation(len(X))
    lab = np.concatenate([order[y[order] == c][: args.labels // 10] for c in range(10)])
    rest = np.setdiff1d(order, lab)
    n_ood = int(args.pool * args.ood_share)
    digits_idx = rng.choice(rest, args.pool - n_ood, replace=False)
    to_f = lambda a: (a.astype(np.float32) / 255.0)[:, None]
    X_lab, y_lab = to_f(X[lab]), y[lab]
    pool = np.concatenate([to_f(X[digits_idx]), to_f(letters[rng.choice(len(letters), n_ood, replace=False)])])
    is_ood = np.r_[np.zeros(len(digits_idx), bool), np.ones(n_ood, bool)]

    t = time.perf_counter()
    gen = build_generator(args.generator, (1, 28, 28), 10, latent_size=16, hidden=256, device=torch.device("cpu"))
    y_pool = np.full(len(pool), -1) if not gen.conditional else np.r_[y[digits_idx], rng.integers(0, 10, n_ood)]
    # a conditional model sees pseudo-labels in a round; here the digits' true labels and random
    # labels for letters stand in for them (an optimistic stand-in for the digits)
    fit_generator(gen, X_lab=X_lab, y_lab=y_lab, X_pool=pool, y_pool=y_pool, policy=args.ood_fit, trim=args.trim,
                  epochs=args.epochs, seed=args.seed, max_steps=4000)
    fit_s = time.perf_counter() - t
    scores = gen.ood_scores(pool)
    reject, _cut = ood_reject(scores, gen.ood_scores(X_lab), args.quantile)
    auroc = float((scores[is_ood][:, None] > scores[~is_ood][None, :]).mean())
    result = {"generator": args.generator, "ood_fit": args.ood_fit, "labels": args.labels, "pool": args.pool,
              "ood_share": args.ood_share, "quantile": args.quantile, "letters_rejected": float(reject[is_ood].mean()),
              "digits_rejected": float(reject[~is_ood].mean()), "auroc": auroc, "fit_seconds": round(fit_s, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
