"""Reports: every round writes report.json, report.html and its plots; every PNG decodes and is
not blank; images get the real-vs-generated grid; the index links every round."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import torch

from trainer.engine import Classifier, RoundResult, evaluate
from trainer.report import (
    history_entry,
    synthetic_verdict,
    write_index,
    write_round_report,
)


def make_result(round_index: int, *, n_classes: int, sample_shape: tuple[int, ...], n_pool: int, seed: int,
                generated: bool = False, promoted: bool = True) -> RoundResult:
    rng = np.random.default_rng(seed)
    y_hold = np.arange(60) % n_classes

    def noisy_proba(correct: float) -> np.ndarray:
        p = rng.dirichlet(np.ones(n_classes), size=len(y_hold))
        hit = rng.random(len(y_hold)) < correct
        p[hit, y_hold[hit]] += 2.0
        return p / p.sum(axis=1, keepdims=True)

    pool_proba = rng.dirichlet(np.ones(n_classes) * 0.3, size=n_pool)
    conf = pool_proba.max(axis=1)
    accepted = np.flatnonzero(conf > 0.8)
    reasons = np.where(conf > 0.8, "", "threshold").astype(object)
    reasons[np.flatnonzero(conf <= 0.8)[:5]] = "ood"
    reasons[np.flatnonzero(conf <= 0.8)[5:8]] = "balance"
    student = Classifier(module=torch.nn.Linear(int(np.prod(sample_shape)), n_classes), sample_shape=sample_shape,
                         n_classes=n_classes, arch={})
    examples = rng.random((6, *sample_shape)).astype(np.float32) if generated else None
    synthetic = (rng.random((4, *sample_shape)).astype(np.float32), np.array([0, 1, 1, 2])) if generated else None
    return RoundResult(
        round_index=round_index, student=student, teacher_eval=evaluate(noisy_proba(0.6), y_hold, n_classes),
        student_eval=evaluate(noisy_proba(0.8), y_hold, n_classes), promoted=promoted,
        reason="student 0.80 >= teacher 0.60" if promoted else "class 2 recall dropped",
        threshold=0.8, accepted_idx=accepted, pseudo_labels=pool_proba[accepted].argmax(axis=1),
        pseudo_confidences=conf[accepted], rejected={"threshold": int((reasons == "threshold").sum()), "ood": 5,
                                                     "balance": 3},
        rejected_reason=reasons.astype(str), pool_confidences=conf, pool_predictions=pool_proba.argmax(axis=1),
        agreement=0.9, stability=None if round_index == 1 else 0.95, synthetic=synthetic,
        synthetic_effect={"holdout_accuracy_with": 0.81, "holdout_accuracy_without": 0.79, "n_synthetic": 4}
        if generated else None,
        generated_examples=examples, timings={"student": 1.5})


def assert_png_ok(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0.02, f"{path.name} looks blank"


def test_table_rounds_and_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X_lab, y_lab = rng.normal(size=(30, 5)).astype(np.float32), np.arange(30) % 3
    X_pool = rng.normal(size=(200, 5)).astype(np.float32)
    history: list[dict] = []
    for r in (1, 2):
        result = make_result(r, n_classes=3, sample_shape=(5,), n_pool=200, seed=r, promoted=r == 2)
        page = write_round_report(tmp_path, result, history, class_names=["a", "b", "c"], sample_shape=(5,),
                                  X_lab_pre=X_lab, X_pool_pre=X_pool, y_lab=y_lab, feature_names=list("vwxyz"),
                                  version=2 if r == 2 else None)
        history.append(history_entry(result, 2 if r == 2 else None))
        assert page == tmp_path / "rounds" / str(r) / "report.html"
    folder = tmp_path / "rounds" / "2"
    report = json.loads((folder / "report.json").read_text())
    assert report["round"] == 2 and report["promoted"] and report["version"] == 2
    assert report["rejected"] == {"threshold": result.rejected["threshold"], "ood": 5, "balance": 3}
    assert report["feature_names"] == list("vwxyz") and report["summary"]["accepted"] == len(result.accepted_idx)
    assert [h["round"] for h in report["history"]] == [1, 2]
    assert set(report["plots"]) == {"accuracy.png", "confusion.png", "per_class.png", "confidence.png", "labels.png",
                                    "embedding.png"}
    for name in report["plots"]:
        assert_png_ok(folder / name)
        assert f'src="{name}"' in (folder / "report.html").read_text()
    assert "Synthetic samples: not used" in (folder / "report.html").read_text()
    index = write_index(tmp_path)
    text = index.read_text()
    assert 'href="rounds/1/report.html"' in text and 'href="rounds/2/report.html"' in text
    assert_png_ok(tmp_path / "accuracy.png")
    # history given as RoundResult.summary() dicts works as well
    write_round_report(tmp_path, make_result(3, n_classes=3, sample_shape=(5,), n_pool=200, seed=3),
                       [result.summary()], class_names=["a", "b", "c"], sample_shape=(5,), X_lab_pre=X_lab,
                       X_pool_pre=X_pool)
    again = json.loads((tmp_path / "rounds" / "3" / "report.json").read_text())
    assert [h["round"] for h in again["history"]] == [2, 3] and again["history"][0]["student_accuracy"] is not None


def test_image_round_has_real_vs_generated_grid_and_synthetic_verdict(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X_lab = rng.random((20, 1, 8, 8)).astype(np.float32)
    y_lab = np.arange(20) % 4
    X_pool = rng.random((100, 1, 8, 8)).astype(np.float32)
    result = make_result(1, n_classes=4, sample_shape=(1, 8, 8), n_pool=100, seed=4, generated=True)
    write_round_report(tmp_path, result, [], class_names=list("0123"), sample_shape=(1, 8, 8), X_lab_pre=X_lab,
                       X_pool_pre=X_pool, y_lab=y_lab)
    folder = tmp_path / "rounds" / "1"
    report = json.loads((folder / "report.json").read_text())
    assert "samples.png" in report["plots"]
    for name in report["plots"]:
        assert_png_ok(folder / name)
    assert report["synthetic"] == "Synthetic samples helped (holdout accuracy 0.8100 with vs 0.7900 without)."


def test_synthetic_verdict_variants() -> None:
    assert synthetic_verdict(None).startswith("Synthetic samples: not used")
    assert synthetic_verdict({"holdout_accuracy_with": 0.7, "holdout_accuracy_without": 0.75}).startswith(
        "Synthetic samples did not help")
