import numpy as np
import pytest

from trainer.engine import RoundResult, run_round, self_train, train_supervised

from .datasets import bar_images, blobs


def _split(X, y, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lab = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)])
    mask = np.zeros(len(y), bool)
    mask[lab] = True
    return (X[mask], y[mask]), X[~mask], y[~mask]


@pytest.mark.parametrize("labeler", ["graph", "teacher"])
def test_run_round_returns_a_consistent_result(fast_settings, labeler):
    X, y = blobs(25)
    (X_l, y_l), X_u, y_u = _split(X, y, 3)
    s = fast_settings.model_copy(update={"pseudo_labeler": labeler, "threshold_start": 0.6, "threshold_end": 0.5,
                                         "generator": "vae", "ood_filter": True})
    teacher = train_supervised(X_l, y_l, n_classes=3, settings=s, seed=0)
    r = run_round(teacher=teacher, teacher_proba=None, labeled=(X_l, y_l), unlabeled=X_u, holdout=(X_l, y_l),
                  n_classes=3, round_index=1, previous_pseudo={0: 0, 1: 1}, pool_ids=np.arange(len(X_u)), settings=s,
                  seed=0)
    assert isinstance(r, RoundResult) and r.round_index == 1
    n = len(X_u)
    assert r.rejected_reason.shape == (n,) and r.pool_confidences.shape == (n,) and r.pool_predictions.shape == (n,)
    assert (r.rejected_reason[r.accepted_idx] == "").all()
    assert sum(r.rejected.values()) + len(r.accepted_idx) == n
    assert len(r.pseudo_labels) == len(r.accepted_idx) == len(r.pseudo_confidences)
    assert r.ood_scores is not None and r.ood_scores.shape == (n,)
    assert r.generated_examples is not None and r.generated_examples.shape[1:] == X.shape[1:]
    assert 0 <= r.agreement <= 1 and r.student.predict_proba(X_u).shape == (n, 3)
    assert (r.pseudo_labels == y_u[r.accepted_idx]).mean() > 0.9  # well separated blobs
    summary = r.summary()
    import json
    json.dumps(summary)
    assert summary["accepted"] == len(r.accepted_idx) and summary["pool_size"] == n
    assert r.promoted == ("student holdout accuracy" in r.reason and ">=" in r.reason)


def test_round_with_conditional_generator_reports_synthetic_effect(fast_settings, tiny_images):
    X, y = tiny_images
    (X_l, y_l), X_u, _ = _split(X, y, 2)
    s = fast_settings.model_copy(update={"generator": "cvae", "synthetic_per_class": 4, "use_synthetic": True,
                                         "denoise": True, "class_balance": True})
    teacher = train_supervised(X_l, y_l, n_classes=3, settings=s, seed=0)
    r = run_round(teacher=teacher, teacher_proba=teacher.predict_proba(X_u), labeled=(X_l, y_l), unlabeled=X_u,
                  holdout=None, n_classes=3, round_index=2, previous_pseudo=None, pool_ids=None, settings=s, seed=1)
    assert r.holdout_source.startswith("labeled training set") and "labeled training set" in r.reason
    if r.synthetic is not None:
        assert r.synthetic[0].shape[1:] == (1, 8, 8) and r.synthetic_effect is not None
        assert set(r.synthetic_effect) >= {"holdout_accuracy_with", "holdout_accuracy_without"}


def test_round_rejects_bad_inputs(fast_settings):
    X, y = blobs(10)
    teacher = train_supervised(X, y, n_classes=3, settings=fast_settings, seed=0)
    with pytest.raises(ValueError, match="teacher_proba"):
        run_round(teacher=teacher, teacher_proba=np.zeros((2, 3)), labeled=(X, y), unlabeled=X, holdout=None,
                  n_classes=3, round_index=1, previous_pseudo=None, pool_ids=None, settings=fast_settings, seed=0)
    with pytest.raises(ValueError, match="ood_filter"):
        run_round(teacher=teacher, teacher_proba=None, labeled=(X, y), unlabeled=X, holdout=None, n_classes=3,
                  round_index=1, previous_pseudo=None, pool_ids=None,
                  settings=fast_settings.model_copy(update={"ood_filter": True}), seed=0)
    with pytest.raises(ValueError, match="sample shape"):
        run_round(teacher=teacher, teacher_proba=None, labeled=(X, y), unlabeled=X[:, :4], holdout=None, n_classes=3,
                  round_index=1, previous_pseudo=None, pool_ids=None, settings=fast_settings, seed=0)


def test_self_train_is_reproducible_and_reports_rounds(fast_settings):
    X, y = bar_images(n_per_class=20)
    (X_l, y_l), X_u, _ = _split(X, y, 3)
    seen = []
    out1 = self_train(X_l, y_l, X_u, None, n_classes=3, settings=fast_settings, seed=3, on_round=seen.append)
    out2 = self_train(X_l, y_l, X_u, None, n_classes=3, settings=fast_settings, seed=3)
    final1, rounds1, base1 = out1
    final2, rounds2, _ = out2
    assert len(rounds1) == fast_settings.rounds == len(seen) and seen[0] is rounds1[0]
    assert np.array_equal(final1.predict_proba(X), final2.predict_proba(X))
    assert [list(r.accepted_idx) for r in rounds1] == [list(r.accepted_idx) for r in rounds2]
    assert rounds1[1].stability is not None
    assert base1.predict_proba(X).shape == (len(X), 3)


def test_self_train_splits_a_holdout(fast_settings):
    X, y = blobs(12)
    (X_l, y_l), X_u, _ = _split(X, y, 4)
    s = fast_settings.model_copy(update={"holdout_fraction": 0.25, "rounds": 1})
    _, rounds, _ = self_train(X_l, y_l, X_u, None, n_classes=3, settings=s, seed=0)
    assert rounds[0].holdout_source == "holdout" and rounds[0].student_eval.n == 3
