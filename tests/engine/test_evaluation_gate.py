import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from trainer.engine import EngineSettings, evaluate, gate
from trainer.engine.evaluation import agreement, expected_calibration_error, stability


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    proba = rng.dirichlet([1, 1, 1, 1], 200)
    proba[np.arange(100), y[:100]] += 2  # half of them right and confident
    proba /= proba.sum(1, keepdims=True)
    ev = evaluate(proba, y, 4)
    pred = proba.argmax(1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    assert ev.accuracy == pytest.approx(accuracy_score(y, pred))
    assert np.allclose(ev.precision, p) and np.allclose(ev.recall, r) and np.allclose(ev.f1, f)
    assert (ev.support == s).all() and (ev.confusion == confusion_matrix(y, pred, labels=range(4))).all()
    assert set(ev.to_dict()) >= {"accuracy", "precision", "recall", "f1", "confusion", "ece"}


def test_ece_zero_when_calibrated_and_large_when_overconfident():
    y = np.array([0, 1] * 50)
    perfect = np.eye(2)[y]
    assert expected_calibration_error(perfect, y) == pytest.approx(0.0)
    wrong = np.eye(2)[1 - y] * 0.98 + 0.01
    assert expected_calibration_error(wrong, y) > 0.9


def test_absent_class_has_a_row():
    ev = evaluate(np.eye(3)[[0, 1, 1]], np.array([0, 1, 1]), 3)
    assert ev.confusion.shape == (3, 3) and ev.support[2] == 0


def test_agreement_and_stability():
    a = np.eye(3)[[0, 1, 2, 2]]
    b = np.eye(3)[[0, 1, 1, 2]]
    assert agreement(a, b) == 0.75
    ids = np.array([10, 11, 12, 13])
    assert stability({10: 0, 11: 2}, ids, np.array([0, 1, 3]), np.array([0, 1, 2])) == 0.5
    assert stability(None, ids, np.array([0]), np.array([0])) is None


def _eval(pred, y):
    return evaluate(np.eye(3)[pred], np.asarray(y), 3)


def test_gate_refuses_worse_student_and_recall_drop_naming_class():
    y = [0] * 10 + [1] * 10 + [2] * 10
    teacher = _eval([0] * 10 + [1] * 10 + [2] * 8 + [0] * 2, y)  # 28/30
    worse = _eval([0] * 10 + [1] * 8 + [0] * 2 + [2] * 7 + [0] * 3, y)
    ok, reason = gate(teacher, worse, EngineSettings())
    assert not ok and "accuracy" in reason
    # better overall but class 1 recall 1.0 -> 0.8
    shifted = _eval([0] * 10 + [1] * 8 + [2] * 2 + [2] * 10, y)
    ok, reason = gate(teacher, shifted, EngineSettings(max_recall_drop=0.1), class_names=["zero", "one", "two"])
    assert not ok and "class one recall dropped" in reason
    ok, reason = gate(teacher, shifted, EngineSettings(max_recall_drop=0.25))
    assert ok, reason
    ok, _ = gate(teacher, teacher, EngineSettings(promotion_margin=0.01))
    assert not ok
