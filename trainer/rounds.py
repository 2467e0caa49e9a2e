"""The CPU-bound part of an online round, run in a worker thread by `trainer.online.OnlineTrainer`:
load the served teacher from the repository, predict the pool afresh with its ONNX graph, run the
engine's round, and for a promoted student export, parity-check and publish the next version and
write the round's report. Also `seed_labels`, which loads the labeled seed and holdout files into
the sample store when the trainer starts.

Everything here works on what the service receives: the FP32 tensor of raw features (categorical
columns as their codes) or raw image pixels. Each version's `model.pt` carries the preprocessor
that turns those into the engine's input, the same one baked into its `model.onnx`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.engine import Classifier, run_round
from trainer.engine.round import RoundResult
from trainer.engine.settings import EngineSettings
from trainer.store import SampleStore

log = logging.getLogger(__name__)

ONNX_BATCH = 1024


class RoundError(RuntimeError):
    """A round cannot run; the message says what is missing."""


@dataclass
class RoundInputs:
    """What a round reads from the store (read in the store's thread, used in a worker thread)."""

    pool_ids: np.ndarray
    pool_X: np.ndarray
    labeled: tuple[np.ndarray, np.ndarray]  # seed labels + feedback (true labels from SubmitLabels)
    holdout: tuple[np.ndarray, np.ndarray]
    previous_pseudo: dict[int, int]
    unlabeled_count: int

    @classmethod
    def from_store(cls, store: SampleStore, engine: EngineSettings) -> RoundInputs:
        ids, X = store.unlabeled_arrays()
        X_lab, y_lab = store.labeled_arrays("labeled")
        X_fb, y_fb = store.labeled_arrays("feedback")
        if len(X_fb) and len(X_lab):
            X_lab, y_lab = np.concatenate([X_lab, X_fb]), np.concatenate([y_lab, y_fb])
        elif len(X_fb):
            X_lab, y_lab = X_fb, y_fb
        return cls(ids, X, (X_lab, y_lab), store.labeled_arrays("holdout"), store.pseudo_labels(),
                   store.counts()["unlabeled"])


@dataclass
class RoundOutput:
    result: RoundResult
    published_version: int | None
    report_path: Path | None
    confirm_sample: np.ndarray | None  # a few inputs and the new version's expected output, to
    confirm_expected: np.ndarray | None  # confirm the service really serves it


@dataclass
class Teacher:
    """A published version as the trainer needs it."""

    version: str
    folder: Path
    classifier: Classifier
    preprocessor: object
    class_names: list[str]
    feature_names: list[str]

    @classmethod
    def load(cls, repo: Path, model: str, version: str, engine: EngineSettings) -> Teacher:
        from trainer.data.preprocess import Preprocessor
        from trainer.publish import load_checkpoint

        folder = Path(repo) / model / version
        if not (folder / "model.pt").is_file():
            raise RoundError(f"{folder}: no model.pt; the served version was not trained by pseudoserve "
                             "(publish one with `pseudoserve bootstrap` to start self-training)")
        ckpt = load_checkpoint(folder / "model.pt")
        device = "cpu" if engine.device == "auto" else engine.device
        return cls(version, folder, Classifier.from_state(ckpt["classifier"], device=device),
                   Preprocessor.from_state(ckpt["preprocessor"]), list(ckpt["class_names"]),
                   list(ckpt["feature_names"]))

    def served_proba(self, X: np.ndarray) -> np.ndarray:
        return onnx_predict(self.folder / "model.onnx", X)


def onnx_predict(path: Path, X: np.ndarray) -> np.ndarray:
    """Probabilities of an exported model on raw inputs, in batches (CPU onnxruntime)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [session.run(["probabilities"], {name: np.ascontiguousarray(X[i:i + ONNX_BATCH], np.float32)})[0]
           for i in range(0, len(X), ONNX_BATCH)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def compute_round(inputs: RoundInputs, *, repo: Path, model: str, teacher_version: str, round_index: int,
                  engine: EngineSettings, reports_dir: Path, history: list) -> RoundOutput:
    """Run one round on `inputs` with the served `teacher_version`; publish a promoted student."""
    del history  # the report keeps its own history (below); the store's summaries are for the API
    if len(inputs.pool_X) == 0:
        raise RoundError("the unlabeled pool is empty: no traffic has been captured yet")
    if len(inputs.labeled[0]) == 0:
        raise RoundError("no labeled samples: start the trainer with --labeled FILE")
    teacher = Teacher.load(repo, model, teacher_version, engine)
    pre = teacher.preprocessor
    t0 = time.perf_counter()
    teacher_proba = teacher.served_proba(inputs.pool_X)  # the served model, afresh, on the whole pool
    X_pool, X_lab = pre.transform(inputs.pool_X), pre.transform(inputs.labeled[0])
    holdout = (pre.transform(inputs.holdout[0]), inputs.holdout[1]) if len(inputs.holdout[0]) else None
    log.info("round %d: teacher v%s predicted %d pool samples in %.1f s", round_index, teacher_version,
             len(X_pool), time.perf_counter() - t0)
    result = run_round(teacher=teacher.classifier, teacher_proba=teacher_proba, labeled=(X_lab, inputs.labeled[1]),
                       unlabeled=X_pool, holdout=holdout, n_classes=len(teacher.class_names), round_index=round_index,
                       previous_pseudo=inputs.previous_pseudo, pool_ids=inputs.pool_ids, settings=engine,
                       seed=engine.seed + round_index, class_names=teacher.class_names)
    published, sample, expected = None, None, None
    if result.promoted:
        published, sample, expected = _publish(result, teacher, inputs, repo=repo, model=model,
                                               round_index=round_index, engine=engine)
    report = _report(result, teacher, X_lab, inputs.labeled[1], X_pool, reports_dir, published)
    return RoundOutput(result, published, report, sample, expected)


def _publish(result: RoundResult, teacher: Teacher, inputs: RoundInputs, *, repo: Path, model: str,
             round_index: int, engine: EngineSettings) -> tuple[int, np.ndarray, np.ndarray]:
    from trainer.export import export_onnx
    from trainer.publish import make_checkpoint, publish_version

    parity = inputs.holdout[0] if len(inputs.holdout[0]) else inputs.labeled[0]
    parity = np.concatenate([parity, inputs.pool_X[:256]])
    with tempfile.TemporaryDirectory(prefix="pseudoserve-round-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        diff = export_onnx(result.student, teacher.preprocessor, onnx_path, class_names=teacher.class_names,
                           feature_names=teacher.feature_names, parity_sample=parity)
        checkpoint = make_checkpoint(classifier=result.student, preprocessor=teacher.preprocessor,
                                     class_names=teacher.class_names, feature_names=teacher.feature_names,
                                     settings=engine, source="round", round=round_index,
                                     teacher_version=int(teacher.version))
        meta = {"source": "round", "round": round_index, "teacher_version": int(teacher.version),
                "created": time.time(), "reason": result.reason, "holdout": result.student_eval.to_dict(),
                "teacher_holdout": result.teacher_eval.to_dict(), "pseudo_labels": len(result.accepted_idx),
                "parity_max_abs_diff": diff}
        sample = parity[:8]
        expected = onnx_predict(onnx_path, sample)
        version = publish_version(repo, model, onnx_path=onnx_path, checkpoint=checkpoint, meta=meta)
    return version, sample, expected


def _report(result: RoundResult, teacher: Teacher, X_lab: np.ndarray, y_lab: np.ndarray, X_pool: np.ndarray,
            reports_dir: Path, published: int | None) -> Path | None:
    """Per-round report + index; a failure to plot never fails the round (it is logged)."""
    from trainer.report import write_index, write_round_report

    try:
        history: list[dict] = []
        previous = sorted((int(p.parent.name), p) for p in (Path(reports_dir) / "rounds").glob("*/report.json")
                          if p.parent.name.isdigit() and int(p.parent.name) < result.round_index)
        if previous:
            history = json.loads(previous[-1][1].read_text()).get("history", [])
        path = write_round_report(Path(reports_dir), result, history, class_names=teacher.class_names,
                                  sample_shape=X_pool.shape[1:], X_lab_pre=X_lab, X_pool_pre=X_pool, y_lab=y_lab,
                                  feature_names=teacher.feature_names,
                                  version=published if published is not None else int(teacher.version))
        write_index(Path(reports_dir))
        return path
    except Exception:
        log.exception("round %d: writing the report failed", result.round_index)
        return None


def seed_labels(store: SampleStore, labeled_file: Path | None, holdout_file: Path | None,
                label_column: str | None, engine: EngineSettings, repo: Path | None = None,
                model: str | None = None) -> dict[str, int]:
    """Load the labeled seed set and the holdout into the store once (skipped when present).

    Labels are indexed by the served model's class names when a published version exists (so
    indices agree with its outputs); without a holdout file, `holdout_fraction` of the labeled
    file is split off (stratified) as the holdout."""
    from trainer.data.loaders import load

    counts = store.counts()
    class_names, preprocessor = _served_names(repo, model)
    added: dict[str, int] = {}
    labeled = None
    if labeled_file is not None and counts["labeled"] == 0:
        labeled = load(labeled_file, label_column=label_column, class_names=class_names)
        X, y = _encode(labeled.X, preprocessor, labeled_file), labeled.y
        if holdout_file is None and counts["holdout"] == 0 and engine.holdout_fraction > 0:
            # the same split `pseudoserve bootstrap` made, so version 1 is never judged on its training rows
            from trainer.data.splits import stratified_holdout

            train_idx, hold_idx = stratified_holdout(y, engine.holdout_fraction, engine.seed)
            added["holdout"] = store.add_labeled(X[hold_idx], y[hold_idx], split="holdout")
            X, y = X[train_idx], y[train_idx]
        added["labeled"] = store.add_labeled(X, y, split="labeled")
    if holdout_file is not None and counts["holdout"] == 0:
        holdout = load(holdout_file, label_column=label_column,
                       class_names=class_names or (labeled.class_names if labeled is not None else None))
        added["holdout"] = store.add_labeled(_encode(holdout.X, preprocessor, holdout_file), holdout.y, split="holdout")
    return added


def _served_names(repo: Path | None, model: str | None) -> tuple[list[str] | None, object | None]:
    if repo is None or model is None:
        return None, None
    from trainer.data.preprocess import Preprocessor
    from trainer.publish import load_checkpoint, version_numbers

    versions = version_numbers(Path(repo) / model)
    for version in reversed(versions):
        path = Path(repo) / model / str(version) / "model.pt"
        if path.is_file():
            ckpt = load_checkpoint(path)
            return list(ckpt["class_names"]), Preprocessor.from_state(ckpt["preprocessor"])
    return None, None


def _encode(X: np.ndarray, preprocessor: object | None, source: Path) -> np.ndarray:
    """What the service would receive for these rows: FP32, categories as their codes."""
    if X.dtype != object:
        return np.asarray(X, dtype=np.float32)
    if preprocessor is None:
        raise RoundError(f"{source}: categorical columns can only be stored once a model is published "
                         "(their codes come from its preprocessor): run `pseudoserve bootstrap` first")
    return preprocessor.encode(X)
