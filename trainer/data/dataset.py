"""From the user's files to the engine's arrays: load, split the holdout, fit the preprocessor.

`prepare(labeled=..., unlabeled=..., holdout=..., label_column=..., scaler=..., holdout_fraction=...,
seed=...)` loads the labeled file (labels required), the unlabeled file (its label column, if any,
is dropped) and an optional holdout file (labels required, classes must be those of the labeled
file), all with the labeled file's columns and types. Without a holdout file a stratified share
`holdout_fraction` of the labeled rows is split off once (`splits.stratified_holdout`); with
`holdout_fraction == 0` there is no holdout and the engine's gate evaluates on the labeled rows
themselves (the engine's documented behaviour; a warning is logged). The preprocessor is fitted on
the labeled training rows + the unlabeled rows (never on the holdout).

Used by `pseudoserve fit`/`bootstrap` and available to the online trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.loaders import Table, load
from trainer.data.preprocess import Preprocessor
from trainer.data.splits import stratified_holdout

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Raw and preprocessed arrays for the engine, plus what describes them."""

    labeled: Table  # training rows only (holdout removed), raw
    unlabeled: Table | None
    holdout_X_raw: np.ndarray
    holdout_y: np.ndarray
    holdout_source: str  # "file <path>", "split <fraction>" or "labeled (no holdout)"
    has_holdout: bool  # False: the holdout arrays are the labeled rows themselves
    preprocessor: Preprocessor
    X_lab: np.ndarray  # preprocessed (n, *model_input_shape) float32
    y_lab: np.ndarray
    X_unlab: np.ndarray
    X_hold: np.ndarray

    @property
    def class_names(self) -> list[str]:
        return list(self.labeled.class_names or [])

    @property
    def engine_holdout(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The `holdout` argument of the engine: None when there is no separate holdout."""
        return (self.X_hold, self.holdout_y) if self.has_holdout else None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_names(self) -> list[str]:
        return list(self.labeled.feature_names)

    def parity_sample(self, n: int = 256, seed: int = 0) -> np.ndarray:
        """Raw rows from the labeled and unlabeled data for the export parity check."""
        rows = [self.labeled.X] + ([self.unlabeled.X] if self.unlabeled is not None else [])
        X = np.concatenate(rows) if len(rows) > 1 else rows[0]
        pick = np.random.default_rng(seed).permutation(len(X))[:n]
        return X[np.sort(pick)]


def _subset(table: Table, idx: np.ndarray) -> Table:
    return Table(X=table.X[idx], y=None if table.y is None else table.y[idx], feature_names=table.feature_names,
                 class_names=table.class_names, kind=table.kind, source=table.source, categorical=table.categorical)


def prepare(*, labeled: str | Path, label_column: str | None, unlabeled: str | Path | None = None,
            holdout: str | Path | None = None, scaler: str = "standard", holdout_fraction: float = 0.0,
            seed: int = 0) -> Prepared:
    lab = load(labeled, label_column=label_column)
    log.info("labeled: %s", lab.describe())
    unlab = None
    if unlabeled is not None:
        unlab = load(unlabeled, label_column=label_column, require_labels=False, like=lab)
        log.info("unlabeled: %s", unlab.describe())
    if holdout is not None:
        hold = load(holdout, label_column=label_column, like=lab)
        log.info("holdout: %s", hold.describe())
        hold_X, hold_y, source = hold.X, hold.y, f"file {hold.source}"
    elif holdout_fraction > 0:
        train_idx, hold_idx = stratified_holdout(lab.y, holdout_fraction, seed)
        hold_X, hold_y, source = lab.X[hold_idx], lab.y[hold_idx], f"split {holdout_fraction:g} of {lab.source}"
        lab = _subset(lab, train_idx)
        log.info("holdout: %d labeled rows split off (stratified, fraction %g)", len(hold_idx), holdout_fraction)
    else:
        hold_X, hold_y, source = lab.X, lab.y, "labeled (no holdout)"
        log.warning("no holdout: the promotion gate evaluates on the labeled training rows "
                    "(give --holdout FILE or holdout_fraction > 0)")
    pre = Preprocessor(scaler=scaler).fit([lab] + ([unlab] if unlab is not None else []))
    empty = np.zeros((0, *pre.output_shape), np.float32)
    return Prepared(labeled=lab, unlabeled=unlab, holdout_X_raw=hold_X, holdout_y=np.asarray(hold_y, np.int64),
                    holdout_source=source, has_holdout=source != "labeled (no holdout)", preprocessor=pre,
                    X_lab=pre.transform(lab.X), y_lab=lab.y,
                    X_unlab=pre.transform(unlab.X) if unlab is not None else empty, X_hold=pre.transform(hold_X))
