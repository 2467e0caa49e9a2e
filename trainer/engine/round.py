"""One self-training round: teacher predictions -> pseudo-labels -> noisy student -> holdout gate.

`run_round` is the engine's unit of work, called by `self_train` (offline `pseudoserve fit`) and by
the online trainer (one call per triggered round, the served model as teacher):

1. The teacher predicts the pool afresh (or the caller passes the served model's fresh
   predictions as `teacher_proba`), averaged over `teacher_augmentations` weak views.
2. Optional generator (`generator`): fitted on labeled + pool data; its scores drive the OOD
   filter; a VAE can denoise pseudo-labeled samples; a conditional one synthesizes labeled
   samples for under-represented classes.
3. A labeler proposes pool labels (`teacher` softmax or `graph` label propagation), aligned to the
   labeled prior; `select_pseudo_labels` applies OOD filter, threshold schedule (round 1 = first
   step of the schedule), class-wise thresholds and class balance.
4. The student trains on labeled + accepted pseudo-labels (+ synthetic), weighted by confidence,
   with dropout, augmentation and optional FixMatch consistency; from scratch or from the teacher.
5. Teacher and student are evaluated on the holdout (the labeled set itself when no holdout is
   given: then the gate is only a sanity check, and the reason says so) and gated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from trainer.engine.augment import augmenter_for
from trainer.engine.evaluation import Evaluation, agreement, evaluate, stability
from trainer.engine.gate import gate
from trainer.engine.generative import build_generator, fit_generator
from trainer.engine.models import Classifier, resolve_device
from trainer.engine.selection import (
    align_distribution,
    get_labeler,
    select_pseudo_labels,
)
from trainer.engine.settings import EngineSettings
from trainer.engine.training import Progress, train_model


@dataclass
class RoundResult:
    """Everything a round decided and measured; `summary()` is the JSON-ready part for reports."""

    round_index: int
    student: Classifier
    teacher_eval: Evaluation
    student_eval: Evaluation
    promoted: bool
    reason: str
    threshold: float | np.ndarray
    accepted_idx: np.ndarray
    pseudo_labels: np.ndarray
    pseudo_confidences: np.ndarray
    rejected: dict[str, int]
    rejected_reason: np.ndarray
    pool_confidences: np.ndarray
    pool_predictions: np.ndarray
    agreement: float
    stability: float | None
    synthetic: tuple[np.ndarray, np.ndarray] | None = None
    synthetic_effect: dict | None = None
    generated_examples: np.ndarray | None = None
    ood_scores: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    holdout_source: str = "holdout"

    def summary(self) -> dict:
        thr = self.threshold.tolist() if isinstance(self.threshold, np.ndarray) else float(self.threshold)
        return {
            "round": self.round_index, "promoted": self.promoted, "reason": self.reason,
            "holdout_source": self.holdout_source, "teacher": self.teacher_eval.to_dict(),
            "student": self.student_eval.to_dict(), "threshold": thr, "pool_size": len(self.pool_confidences),
            "accepted": len(self.accepted_idx), "rejected": dict(self.rejected),
            "pseudo_label_counts": np.bincount(self.pseudo_labels, minlength=self.student.n_classes).tolist(),
            "agreement": self.agreement, "stability": self.stability,
            "synthetic": len(self.synthetic[1]) if self.synthetic is not None else 0,
            "synthetic_effect": self.synthetic_effect, "timings": dict(self.timings),
        }

    def accepted_map(self, pool_ids: np.ndarray | None = None) -> dict[int, int]:
        """sample id -> accepted label, the `previous_pseudo` of the next round."""
        ids = pool_ids if pool_ids is not None else np.arange(len(self.pool_confidences))
        return {int(ids[i]): int(c) for i, c in zip(self.accepted_idx, self.pseudo_labels)}


def teacher_predictions(teacher: Classifier, X: np.ndarray, *, views: int, seed: int,
                        settings: EngineSettings) -> np.ndarray:
    """Teacher softmax on X averaged over the plain view and `views` weakly augmented ones."""
    proba = teacher.predict_proba(X).astype(np.float64)
    if views == 0 or len(X) == 0:
        return proba.astype(np.float32)
    aug = augmenter_for(teacher.sample_shape, enabled=True, strength=settings.augment_strength)
    g = torch.Generator().manual_seed(seed)
    device = next(teacher.module.parameters()).device
    teacher.module.eval()
    with torch.no_grad():
        for _ in range(views):
            for i in range(0, len(X), teacher.batch_size):
                x = torch.from_numpy(np.asarray(X[i:i + teacher.batch_size], np.float32)).to(device)
                proba[i:i + len(x)] += torch.softmax(teacher.module(aug.weak(x, g)), dim=1).cpu().numpy()
    return (proba / (views + 1)).astype(np.float32)


def _graph_features(teacher: Classifier, X_lab: np.ndarray, X_pool: np.ndarray, kind: str,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm kNN-graph features of labeled and pool samples (`graph_features`).

    The input part is reduced by PCA to 64 dimensions when it is larger (28x28 images), which keeps
    the kNN search on a large pool cheap and loses little: pixel space is only the fallback view.
    """
    def unit(a: np.ndarray) -> np.ndarray:
        a = a.reshape(len(a), -1).astype(np.float32)
        return a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-8)

    def inputs() -> tuple[np.ndarray, np.ndarray]:
        A = np.concatenate([X_lab, X_pool]).reshape(len(X_lab) + len(X_pool), -1)
        if A.shape[1] > 64 and len(A) > 64:
            from sklearn.decomposition import PCA
            A = PCA(64, svd_solver="randomized", random_state=seed).fit_transform(A)
        A = unit(A)
        return A[:len(X_lab)], A[len(X_lab):]

    if kind == "input":
        return inputs()
    emb_lab, emb_pool = unit(teacher.embed(X_lab)), unit(teacher.embed(X_pool))
    if kind == "embedding":
        return emb_lab, emb_pool
    in_lab, in_pool = inputs()
    r2 = np.sqrt(2.0)
    return np.concatenate([emb_lab, in_lab], 1) / r2, np.concatenate([emb_pool, in_pool], 1) / r2


def _synthesize(gen, counts: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Samples for classes below the largest class count, at most `per_class` each."""
    need = np.minimum(counts.max() - counts, per_class)
    labels = np.repeat(np.arange(len(counts)), need).astype(np.int64)
    if len(labels) == 0:
        return None
    return gen.sample(len(labels), labels, seed=seed), labels


def run_round(*, teacher: Classifier, teacher_proba: np.ndarray | None, labeled: tuple[np.ndarray, np.ndarray],
              unlabeled: np.ndarray, holdout: tuple[np.ndarray, np.ndarray] | None, n_classes: int, round_index: int,
              previous_pseudo: dict[int, int] | None, pool_ids: np.ndarray | None, settings: EngineSettings,
              seed: int, progress: Progress | None = None, class_names: list[str] | None = None) -> RoundResult:
    """Run one round (see module docstring); `round_index` 1 = first round after the bootstrap."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    X_lab, y_lab = np.asarray(labeled[0], np.float32), np.asarray(labeled[1], np.int64)
    X_pool = np.asarray(unlabeled, np.float32)
    if X_pool.shape[1:] != X_lab.shape[1:]:
        raise ValueError(f"unlabeled: sample shape {X_pool.shape[1:]} differs from labeled {X_lab.shape[1:]}")
    prior = np.bincount(y_lab, minlength=n_classes) / max(len(y_lab), 1)
    step = max(round_index - 1, 0)

    # 1. fresh teacher view of the pool
    if teacher_proba is None:
        teacher_proba = teacher_predictions(teacher, X_pool, views=settings.teacher_augmentations, seed=seed,
                                            settings=settings)
    elif teacher_proba.shape != (len(X_pool), n_classes):
        raise ValueError(f"teacher_proba: expected shape ({len(X_pool)}, {n_classes}), got {teacher_proba.shape}")
    teacher_proba = np.asarray(teacher_proba, np.float32)
    timings["teacher_predict_s"] = time.perf_counter() - t0

    # 2. generator: OOD scores, denoising, synthesis
    t = time.perf_counter()
    gen = build_generator(settings.generator, X_lab.shape[1:], n_classes, latent_size=settings.latent_size,
                          hidden=settings.generator_hidden, device=resolve_device(settings.device))
    ood_scores = ood_mask = None
    if gen is not None:
        confident = np.where(teacher_proba.max(axis=1) >= settings.threshold_start, teacher_proba.argmax(axis=1), -1)
        fit_generator(gen, X_lab=X_lab, y_lab=y_lab, X_pool=X_pool, y_pool=confident, policy=settings.ood_fit,
                      trim=settings.ood_trim, epochs=settings.generator_epochs, seed=seed,
                      max_steps=settings.max_steps, progress=progress)
        ood_scores = gen.ood_scores(X_pool)
        if settings.ood_filter:
            from trainer.engine.selection import ood_reject
            ood_mask, _ = ood_reject(ood_scores, gen.ood_scores(X_lab), settings.ood_quantile)
    elif settings.ood_filter:
        raise ValueError("ood_filter: needs a generator (vae, cvae, gan or cgan), generator is 'none'")
    timings["generator_s"] = time.perf_counter() - t

    # 3. propose and select pseudo-labels
    t = time.perf_counter()
    kwargs: dict = {}
    if settings.pseudo_labeler == "graph":
        feats_lab, feats_pool = _graph_features(teacher, X_lab, X_pool, settings.graph_features, seed)
        kwargs = {"labeled_features": feats_lab, "pool_features": feats_pool, "k": settings.graph_k,
                  "alpha": settings.graph_alpha, "teacher_weight": settings.graph_teacher_weight,
                  "class_normalization": settings.graph_class_normalization}
    proposal = get_labeler(settings.pseudo_labeler)(teacher_proba=teacher_proba, labeled_y=y_lab,
                                                   n_classes=n_classes, **kwargs)
    proba, weight = proposal.proba, proposal.weight
    if settings.distribution_alignment and len(proba):
        proba = align_distribution(proba, prior)
    confidence = proba.max(axis=1) if len(proba) else np.zeros(0, np.float32)
    if settings.pseudo_labeler == "teacher":
        weight = confidence
    sel = select_pseudo_labels(proba, confidence, round_index=step, settings=settings, prior=prior, ood_mask=ood_mask)
    timings["select_s"] = time.perf_counter() - t

    # 4. student
    t = time.perf_counter()
    X_p = X_pool[sel.accepted_idx]
    if settings.denoise and gen is not None and len(X_p):
        denoised = gen.reconstruct(X_p)
        if denoised is None:
            raise ValueError(f"denoise: generator {settings.generator!r} cannot reconstruct; use vae or cvae")
        X_p = denoised
    w_p = weight[sel.accepted_idx] if settings.weight_by_confidence else np.ones(len(X_p), np.float32)
    synthetic = None
    if gen is not None and gen.conditional and settings.synthetic_per_class > 0:
        counts = np.bincount(y_lab, minlength=n_classes) + np.bincount(sel.labels, minlength=n_classes)
        synthetic = _synthesize(gen, counts, settings.synthetic_per_class, seed)
    pseudo = (X_p, sel.labels, w_p)
    with_synth = pseudo
    if synthetic is not None and settings.use_synthetic:
        with_synth = (np.concatenate([X_p, synthetic[0]]), np.concatenate([sel.labels, synthetic[1]]),
                      np.concatenate([w_p, np.ones(len(synthetic[1]), np.float32)]))
    student = train_model((X_lab, y_lab), n_classes=n_classes, settings=settings, seed=seed, pseudo=with_synth,
                          unlabeled=X_pool if ood_mask is None else X_pool[~ood_mask], init=teacher,
                          progress=progress, task=f"round {round_index} student")
    timings["student_train_s"] = time.perf_counter() - t

    # 5. evaluate and gate
    t = time.perf_counter()
    holdout_source = "holdout"
    if holdout is None or len(holdout[1]) == 0:
        holdout, holdout_source = (X_lab, y_lab), "labeled training set (no holdout given)"
    X_h, y_h = np.asarray(holdout[0], np.float32), np.asarray(holdout[1], np.int64)
    teacher_eval = evaluate(teacher.predict_proba(X_h), y_h, n_classes)
    student_eval = evaluate(student.predict_proba(X_h), y_h, n_classes)
    synthetic_effect = None
    if synthetic is not None and settings.use_synthetic and settings.measure_synthetic_effect:
        without = train_model((X_lab, y_lab), n_classes=n_classes, settings=settings, seed=seed, pseudo=pseudo,
                              unlabeled=None, init=teacher, task=f"round {round_index} student without synthetic")
        synthetic_effect = {"holdout_accuracy_with": student_eval.accuracy,
                            "holdout_accuracy_without": evaluate(without.predict_proba(X_h), y_h, n_classes).accuracy,
                            "n_synthetic": len(synthetic[1])}
    promoted, reason = gate(teacher_eval, student_eval, settings, class_names)
    if holdout_source != "holdout":
        reason += f" [gate evaluated on the {holdout_source}]"
    student_pool = student.predict_proba(X_pool) if len(X_pool) else np.zeros((0, n_classes), np.float32)
    examples = None
    if gen is not None:
        labels = np.arange(16) % n_classes if gen.conditional else None
        examples = gen.sample(16, labels, seed=seed)
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return RoundResult(
        round_index=round_index, student=student, teacher_eval=teacher_eval, student_eval=student_eval,
        promoted=promoted, reason=reason, threshold=sel.threshold, accepted_idx=sel.accepted_idx,
        pseudo_labels=sel.labels, pseudo_confidences=sel.confidences, rejected=sel.rejected,
        rejected_reason=sel.rejected_reason, pool_confidences=confidence.astype(np.float32),
        pool_predictions=(proba.argmax(axis=1) if len(proba) else np.zeros(0, np.int64)),
        agreement=agreement(teacher_proba, student_pool),
        stability=stability(previous_pseudo, pool_ids, sel.accepted_idx, sel.labels), synthetic=synthetic,
        synthetic_effect=synthetic_effect, generated_examples=examples, ood_scores=ood_scores, timings=timings,
        holdout_source=holdout_source)
