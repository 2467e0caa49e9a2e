"""Training of teachers and students: supervised bootstrap and noisy student training.

`train_model` is the one training loop. It samples mini-batches from the labeled samples plus
the (weighted) pseudo-labeled ones, applies the weak augmentation and dropout (the student's
noise, Noisy Student, Xie et al. 2020), and optionally adds a FixMatch consistency term (Sohn et
al. 2020) on the unlabeled pool: the model's own prediction on a weak view, when confident, is the
target for a strong view. AdamW with a one-cycle schedule; the number of steps is the epochs over
the larger of the training set and the pool, clipped to [min_steps, max_steps]; with
`labeled_batch_fraction` > 0 that share of every batch comes from the labeled samples (as the
separate labeled batch of FixMatch), so a large pseudo-labeled set cannot drown the labels;
with `ema_decay` > 0 the returned weights are the exponential moving average of the trajectory. A student starts
from scratch or from a copy of the teacher's weights (`student_init`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from trainer.engine.augment import augmenter_for
from trainer.engine.models import (
    Classifier,
    architecture,
    build_network,
    resolve_device,
)
from trainer.engine.settings import EngineSettings

Progress = Callable[[str, int, int], None]


def _check_xy(X: np.ndarray, y: np.ndarray, n_classes: int, what: str) -> None:
    if len(X) != len(y):
        raise ValueError(f"{what}: {len(X)} samples but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{what}: labels must be in [0, {n_classes}), got range [{y.min()}, {y.max()}]")


def train_model(labeled: tuple[np.ndarray, np.ndarray], *, n_classes: int, settings: EngineSettings, seed: int,
                pseudo: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                unlabeled: np.ndarray | None = None, init: Classifier | None = None,
                progress: Progress | None = None, task: str = "train") -> Classifier:
    """Train a classifier on labeled (+ weighted pseudo-labeled) data, optionally with consistency on `unlabeled`."""
    X_lab, y_lab = np.asarray(labeled[0], np.float32), np.asarray(labeled[1], np.int64)
    _check_xy(X_lab, y_lab, n_classes, "labeled")
    if len(X_lab) == 0:
        raise ValueError("labeled: at least one labeled sample is needed")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    sample_shape = tuple(X_lab.shape[1:])
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    if init is not None and settings.student_init == "teacher":
        arch = dict(init.arch)
        module = copy.deepcopy(init.module)
    else:
        arch = architecture(sample_shape, n_classes, classifier=settings.classifier, hidden_sizes=settings.hidden_sizes,
                            cnn_channels=settings.cnn_channels, dropout=settings.dropout)
        module = build_network(arch)
    module.to(device).train()

    X_all, y_all, w_all = X_lab, y_lab, np.ones(len(X_lab), np.float32)
    if pseudo is not None and len(pseudo[0]):
        X_p, y_p, w_p = (np.asarray(pseudo[0], np.float32), np.asarray(pseudo[1], np.int64),
                         np.asarray(pseudo[2], np.float32))
        _check_xy(X_p, y_p, n_classes, "pseudo-labeled")
        X_all, y_all, w_all = np.concatenate([X_lab, X_p]), np.concatenate([y_lab, y_p]), np.concatenate([w_all, w_p])
    xs = torch.from_numpy(X_all).to(device)
    ys = torch.from_numpy(y_all).to(device)
    ws = torch.from_numpy(w_all).to(device)
    use_consistency = settings.consistency_weight > 0 and unlabeled is not None and len(unlabeled) > 0
    xu = torch.from_numpy(np.asarray(unlabeled, np.float32)).to(device) if use_consistency else None

    aug = augmenter_for(sample_shape, enabled=settings.augment, strength=settings.augment_strength)
    epoch_size = max(len(xs), len(xu) if xu is not None else 0)
    steps = settings.epochs * math.ceil(epoch_size / settings.batch_size)
    steps = int(min(max(steps, settings.min_steps), settings.max_steps))
    opt = torch.optim.AdamW(module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps)
    report_every = max(1, steps // 20)
    # weight averaging is for students; a bootstrap on a few labels is too short a run for it
    ema = copy.deepcopy(module) if settings.ema_decay > 0 and len(xs) > len(X_lab) else None
    n_lab_batch = round(settings.labeled_batch_fraction * settings.batch_size)
    for step in range(steps):
        if n_lab_batch and len(xs) > len(X_lab):
            idx = torch.cat([torch.randint(0, len(X_lab), (n_lab_batch,), generator=g),
                             torch.randint(len(X_lab), len(xs), (settings.batch_size - n_lab_batch,), generator=g)])
        else:
            idx = torch.randint(0, len(xs), (settings.batch_size,), generator=g)
        idx = idx.to(device)
        logits = module(aug.weak(xs[idx], g))
        loss = (F.cross_entropy(logits, ys[idx], reduction="none") * ws[idx]).mean()
        if xu is not None:
            j = torch.randint(0, len(xu), (settings.batch_size,), generator=g).to(device)
            with torch.no_grad():
                p_weak = torch.softmax(module(aug.weak(xu[j], g)), dim=1)
            conf, target = p_weak.max(dim=1)
            mask = (conf >= settings.consistency_threshold).float()
            strong_logits = module(aug.strong(xu[j], g))
            loss = loss + settings.consistency_weight * (F.cross_entropy(strong_logits, target, reduction="none") * mask).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema.parameters(), module.parameters()):
                    e.lerp_(p, 1.0 - settings.ema_decay)
                for e, b in zip(ema.buffers(), module.buffers()):
                    e.copy_(b)
        if progress is not None and ((step + 1) % report_every == 0 or step + 1 == steps):
            progress(task, step + 1, steps)
    if ema is not None:
        module = ema  # weight averaging: a smoother, usually better-generalizing model (mean teacher)
    module.eval()
    return Classifier(module=module, sample_shape=sample_shape, n_classes=n_classes, arch=arch,
                      batch_size=settings.eval_batch_size, info={"steps": steps, "seed": seed})


def train_supervised(X: np.ndarray, y: np.ndarray, *, n_classes: int, settings: EngineSettings, seed: int,
                     progress: Progress | None = None) -> Classifier:
    """A classifier trained on the labels alone (the bootstrap teacher / supervised baseline)."""
    return train_model((X, y), n_classes=n_classes, settings=settings, seed=seed, progress=progress, task="supervised")
