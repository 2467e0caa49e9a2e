"""Pseudo-label proposers (`pseudo_labeler`): turn the teacher's view of the pool into class probabilities.

`teacher`: the teacher's softmax on the pool (averaged over weakly augmented views by the caller),
confidence = max probability (classic Pseudo-Label, Lee 2013).

`graph`: label propagation for deep semi-supervised learning (Iscen et al., CVPR 2019). A kNN
graph over labeled + pool samples in the teacher's embedding space (optionally concatenated with
the input space) with edge weights cos^3, symmetrically normalized to W; the labels diffuse by
solving (I - alpha W) Z = Y with conjugate gradients, Y = one-hot rows for labeled nodes and
(optionally) `graph_teacher_weight` x teacher probabilities for pool nodes. Optionally
(`graph_class_normalization`) each class's column is scaled so its pool mass matches the labeled
prior (class mass normalization, Zhou et al. 2004). Rows of Z are normalized into probabilities;
confidence = max probability, and the sample weight is 1 - entropy / log(n_classes) as in the
paper. Smoothing over the data manifold corrects a teacher trained on a handful of labels far
better than its own confidence can.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import cg
from sklearn.neighbors import NearestNeighbors


@dataclass
class Proposal:
    """Pool class probabilities, confidence used by thresholds, and loss weight per sample."""

    proba: np.ndarray  # (n_pool, n_classes)
    confidence: np.ndarray  # (n_pool,)
    weight: np.ndarray  # (n_pool,)


def _entropy_weight(proba: np.ndarray) -> np.ndarray:
    n_classes = proba.shape[1]
    entropy = -(proba * np.log(proba + 1e-12)).sum(axis=1)
    return (1.0 - entropy / np.log(n_classes)).clip(0.0, 1.0).astype(np.float32)


def teacher_labeler(*, teacher_proba: np.ndarray, **_: object) -> Proposal:
    proba = np.asarray(teacher_proba, np.float32)
    return Proposal(proba=proba, confidence=proba.max(axis=1), weight=proba.max(axis=1))


def label_propagation(features: np.ndarray, seeds: np.ndarray, *, k: int, alpha: float, gamma: float = 3.0,
                      max_iter: int = 30) -> np.ndarray:
    """Diffuse `seeds` (n, C) over a kNN graph of `features` (n, D); returns Z (n, C) >= 0."""
    n = len(features)
    norm = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-8)
    k = min(k, n - 1)
    if k < 1:
        return seeds.copy()
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(norm).kneighbors(norm)
    idx = idx[:, 1:]
    cos = 1.0 - dist[:, 1:] ** 2 / 2.0  # unit vectors: |a-b|^2 = 2 - 2 cos
    sim = cos.clip(0.0) ** gamma
    W = sp.csr_matrix((sim.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    W = W + W.T
    degree = np.asarray(W.sum(axis=1)).ravel()
    d_inv_sqrt = sp.diags(1.0 / np.sqrt(degree.clip(1e-12)))
    A = sp.identity(n, format="csr") - alpha * (d_inv_sqrt @ W @ d_inv_sqrt)
    Z = np.zeros_like(seeds, dtype=np.float64)
    for c in range(seeds.shape[1]):
        if seeds[:, c].any():
            Z[:, c] = cg(A, seeds[:, c].astype(np.float64), maxiter=max_iter)[0]
    return Z.clip(0.0)


def graph_labeler(*, teacher_proba: np.ndarray, labeled_y: np.ndarray, labeled_features: np.ndarray,
                  pool_features: np.ndarray, n_classes: int, k: int, alpha: float, teacher_weight: float,
                  class_normalization: bool = False, **_: object) -> Proposal:
    n_lab = len(labeled_y)
    features = np.concatenate([labeled_features, pool_features]).astype(np.float32)
    seeds = np.zeros((len(features), n_classes))
    seeds[n_lab:] = teacher_weight * teacher_proba
    seeds[np.arange(n_lab), labeled_y] = 1.0
    Z = label_propagation(features, seeds, k=k, alpha=alpha)[n_lab:]
    if class_normalization:
        # class mass normalization: a class whose labels sit in a dense, well-connected region
        # collects more mass than its share; scale each column to the labeled prior's share
        prior = np.bincount(labeled_y, minlength=n_classes) / n_lab
        mass = Z.sum(axis=0)
        Z = Z * np.where(mass > 1e-12, prior / mass.clip(1e-12), 0.0)
    total = Z.sum(axis=1, keepdims=True)
    # an isolated pool node receives nothing from the graph: keep the teacher's view for it
    proba = np.where(total > 1e-12, Z / total.clip(1e-12), teacher_proba).astype(np.float32)
    return Proposal(proba=proba, confidence=proba.max(axis=1), weight=_entropy_weight(proba))


LABELERS: dict[str, Callable[..., Proposal]] = {"teacher": teacher_labeler, "graph": graph_labeler}


def get_labeler(name: str) -> Callable[..., Proposal]:
    try:
        return LABELERS[name]
    except KeyError:
        raise ValueError(f"pseudo_labeler: unknown {name!r}; valid: {', '.join(LABELERS)}") from None
