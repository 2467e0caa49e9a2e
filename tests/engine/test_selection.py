import numpy as np
import pytest

from trainer.engine import EngineSettings
from trainer.engine.selection import (
    align_distribution,
    balance,
    classwise_thresholds,
    get_labeler,
    get_schedule,
    ood_reject,
    select_pseudo_labels,
)
from trainer.engine.selection.labelers import label_propagation


def test_linear_schedule_goes_high_to_low_and_stays_in_band():
    s = EngineSettings(threshold_start=0.95, threshold_end=0.6, threshold_decay=0.1)
    values = [get_schedule("linear")(np.zeros(1), round_index=r, settings=s) for r in range(6)]
    assert values == pytest.approx([0.95, 0.85, 0.75, 0.65, 0.6, 0.6])


def test_percentile_schedule_accepts_growing_share():
    conf = np.linspace(0.5, 0.99, 101)
    s = EngineSettings(threshold_schedule="percentile", percentile=20)
    t0 = get_schedule("percentile")(conf, round_index=0, settings=s)
    t1 = get_schedule("percentile")(conf, round_index=1, settings=s)
    assert (conf >= t0).mean() == pytest.approx(0.2, abs=0.02)
    assert (conf >= t1).mean() == pytest.approx(0.4, abs=0.02)
    with pytest.raises(ValueError, match="valid: linear, percentile"):
        get_schedule("cosine")


def test_classwise_thresholds_lower_for_a_class_still_being_learned():
    # class 0: many confident predictions; class 1: few
    conf = np.array([0.97] * 50 + [0.96] * 5 + [0.7] * 45)
    labels = np.array([0] * 50 + [1] * 5 + [1] * 45)
    t = classwise_thresholds(conf, labels, base=0.95, n_classes=2)
    assert t[0] == pytest.approx(0.95)
    assert 0.5 <= t[1] < t[0]


def test_balance_respects_prior_and_cap():
    labels = np.array([0] * 80 + [1] * 20)
    conf = np.linspace(1, 0.5, 100)
    keep = balance(labels, conf, prior=np.array([0.5, 0.5]), slack=1.0, max_fraction=1.0)
    assert keep[labels == 0].sum() == 50 and keep[labels == 1].sum() == 20
    assert keep[:50].all() and not keep[50:80].any()  # most confident of the excess class kept
    keep = balance(labels, conf, prior=np.array([0.9, 0.1]), slack=1.0, max_fraction=0.3)
    assert keep[labels == 0].sum() == 30


def test_alignment_matches_prior():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([5, 1, 1], size=500)
    aligned = align_distribution(p, np.array([1 / 3, 1 / 3, 1 / 3]))
    assert np.allclose(aligned.sum(1), 1, atol=1e-5)
    assert np.abs(aligned.mean(0) - 1 / 3).max() < np.abs(p.mean(0) - 1 / 3).max()


def test_ood_filter_rejects_far_points():
    rng = np.random.default_rng(0)
    ref = rng.normal(1.0, 0.1, 200)
    pool = np.concatenate([rng.normal(1.0, 0.1, 50), rng.normal(5.0, 0.1, 10)])
    mask, cut = ood_reject(pool, ref, 0.99)
    assert mask[50:].all() and mask[:50].sum() <= 3 and cut < 5


def test_select_reports_reasons():
    proba = np.array([[0.98, 0.02], [0.6, 0.4], [0.97, 0.03], [0.96, 0.04], [0.05, 0.95], [0.99, 0.01]])
    s = EngineSettings(threshold_start=0.9, threshold_end=0.9, class_balance=True, balance_slack=1.0,
                       max_class_fraction=1.0)
    sel = select_pseudo_labels(proba, proba.max(1), round_index=0, settings=s, prior=np.array([0.5, 0.5]),
                               ood_mask=np.array([False, False, False, False, False, True]))
    # 4 passed the threshold, so each class may keep 0.5 * 4 = 2: the least confident class-0 one goes
    assert list(sel.rejected_reason) == ["", "threshold", "", "balance", "", "ood"]
    assert sel.rejected == {"threshold": 1, "balance": 1, "ood": 1}
    assert list(sel.accepted_idx) == [0, 2, 4] and list(sel.labels) == [0, 0, 1]


def test_graph_labeler_corrects_a_wrong_teacher_along_the_manifold():
    # two chains of unit vectors (cosine 0 between chains); the teacher says class 1 everywhere
    theta = np.linspace(0, np.pi / 2, 60)
    zeros = np.zeros_like(theta)
    a = np.stack([np.cos(theta), np.sin(theta), zeros, zeros], 1)
    b = np.stack([zeros, zeros, np.cos(theta), np.sin(theta)], 1)
    X = np.concatenate([a, b]).astype(np.float32)
    y = np.array([0] * 60 + [1] * 60)
    lab = np.array([0, 60])
    pool = np.setdiff1d(np.arange(120), lab)
    teacher = np.tile(np.array([[0.2, 0.8]], np.float32), (len(pool), 1))
    prop = get_labeler("graph")(teacher_proba=teacher, labeled_y=y[lab], labeled_features=X[lab],
                                pool_features=X[pool], n_classes=2, k=4, alpha=0.99, teacher_weight=0.0)
    assert (prop.proba.argmax(1) == y[pool]).mean() > 0.95
    assert prop.weight.shape == (len(pool),) and (prop.weight >= 0).all() and (prop.weight <= 1).all()
    with pytest.raises(ValueError, match="valid: teacher, graph"):
        get_labeler("magic")


def test_label_propagation_keeps_seeds_dominant():
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    seeds = np.zeros((30, 2))
    seeds[0, 0] = seeds[1, 1] = 1
    Z = label_propagation(X, seeds, k=5, alpha=0.9)
    assert Z.shape == (30, 2) and (Z >= 0).all() and Z[0, 0] > Z[0, 1] and Z[1, 1] > Z[1, 0]


def test_class_mass_normalization_rescales_an_inflated_class(monkeypatch):
    # class 0's label sits in a dense region: its scores are 3x inflated on every pool node, so
    # rows that lean towards class 1 in shape still come out class 0 without normalization
    from trainer.engine.selection import labelers

    pool_Z = np.array([[3.0, 0.0], [0.0, 1.0], [1.5, 0.8], [3.0, 0.4], [0.3, 1.0]])
    Z = np.concatenate([np.eye(2), pool_Z])
    monkeypatch.setattr(labelers, "label_propagation", lambda features, seeds, **_: Z.copy())
    args = {"teacher_proba": np.full((5, 2), 0.5, np.float32), "labeled_y": np.array([0, 1]),
            "labeled_features": np.zeros((2, 3), np.float32), "pool_features": np.zeros((5, 3), np.float32),
            "n_classes": 2, "k": 3, "alpha": 0.99, "teacher_weight": 0.0}
    plain = labelers.graph_labeler(**args).proba
    normalized = labelers.graph_labeler(**args, class_normalization=True).proba
    # column masses 7.8 and 3.2: class 1's scores are scaled up by 7.8 / 3.2 relative to class 0's
    assert list(plain.argmax(1)) == [0, 1, 0, 0, 1]
    assert list(normalized.argmax(1)) == [0, 1, 1, 0, 1]
    assert np.allclose(normalized.sum(1), 1.0)
