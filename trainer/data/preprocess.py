"""Preprocessing fitted on labeled + unlabeled data, in numpy for training and in torch for export.

`Preprocessor.fit(tables)` learns, per numeric column, the median (imputation) and the centre and
scale (`standard`: mean/std, `minmax`: min/max-min, both computed after imputation; a constant
column gets scale 1), and per categorical column its categories (sorted) and the most frequent one.
Images get one global fill value, centre and scale (so MNIST pixels 0..255 become ~0..1 with
`minmax`).

Categorical strings cannot travel in the service's FP32 input tensor, so the model input is the raw
columns in file order where a categorical column carries the *index* of its category in the list
recorded in the ONNX metadata `categories` (`{"column": ["cat0", "cat1", ...]}`); a missing,
unknown or out-of-range code (NaN, -1, ...) is imputed with the most frequent category, a missing
number (NaN) with the median. `encode` maps strings to those codes; `transform` (numpy) and
`to_torch()` (the module baked into the ONNX graph in front of the classifier) then impute, scale
and one-hot encode identically: numeric columns first (in file order), then one one-hot block per
categorical column.

Used by the offline CLI and the online trainer; `state()`/`from_state()` round-trip through
`model.pt` checkpoints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from trainer.data.loaders import DataError, Table

SCALERS = ("standard", "minmax")


@dataclass
class Preprocessor:
    """Fitted imputation, scaling and one-hot encoding from raw features to the model input."""

    scaler: str = "standard"
    kind: str = "table"
    feature_names: list[str] = field(default_factory=list)
    input_shape: list[int] = field(default_factory=list)  # raw sample shape, e.g. [d] or [1, 28, 28]
    numeric: list[int] = field(default_factory=list)  # column indices
    fill: list[float] = field(default_factory=list)
    center: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    categorical: list[int] = field(default_factory=list)
    categories: list[list[str]] = field(default_factory=list)
    mode: list[int] = field(default_factory=list)
    clip: float = 5.0  # numeric table columns: scaled values clamped to [-clip, clip]; 0 = off
    fitted: bool = False

    def __post_init__(self) -> None:
        if self.scaler not in SCALERS:
            raise ValueError(f"scaler: unknown scaler {self.scaler!r} (choose from {', '.join(SCALERS)})")

    # --- fitting -------------------------------------------------------------------------------

    def fit(self, tables: Sequence[Table]) -> Preprocessor:
        """Learn the statistics from `tables` (labeled + unlabeled; all must share their columns)."""
        if not tables:
            raise ValueError("tables: nothing to fit on")
        ref = tables[0]
        for t in tables[1:]:
            if t.kind != ref.kind or t.sample_shape != ref.sample_shape:
                raise DataError(f"{t.source}: samples of shape {t.sample_shape} ({t.kind}) do not match "
                                f"{ref.source} ({ref.sample_shape}, {ref.kind})")
            if t.feature_names != ref.feature_names or sorted(t.categorical) != sorted(ref.categorical):
                raise DataError(f"{t.source}: columns {t.feature_names} (categorical: {t.categorical}) do not "
                                f"match {ref.source} ({ref.feature_names}, categorical: {ref.categorical}); "
                                "load it with like=")
        self.kind, self.feature_names, self.input_shape = ref.kind, list(ref.feature_names), list(ref.sample_shape)
        if ref.kind == "image":
            values = np.concatenate([t.X.reshape(-1).astype(np.float64) for t in tables])
            fill = float(np.nanmedian(values)) if np.isfinite(values).any() else 0.0
            values = np.where(np.isnan(values), fill, values)
            center, scale = self._stats(values)
            self.fill, self.center, self.scale = [fill], [center], [scale]
        else:
            cat_names = set(ref.categorical)
            self.numeric = [j for j, n in enumerate(ref.feature_names) if n not in cat_names]
            self.categorical = [j for j, n in enumerate(ref.feature_names) if n in cat_names]
            self.fill, self.center, self.scale, self.categories, self.mode = [], [], [], [], []
            for j in self.numeric:
                col = np.concatenate([t.X[:, j].astype(np.float64) for t in tables])
                fill = float(np.nanmedian(col)) if (~np.isnan(col)).any() else 0.0
                center, scale = self._stats(np.where(np.isnan(col), fill, col))
                self.fill.append(fill)
                self.center.append(center)
                self.scale.append(scale)
            for j in self.categorical:
                counts = Counter(v for t in tables for v in t.X[:, j] if v is not None)
                cats = sorted(counts)
                self.categories.append(cats)
                best = max(cats, key=lambda c: (counts[c], -cats.index(c))) if cats else None
                self.mode.append(cats.index(best) if best is not None else 0)
        self.fitted = True
        return self

    def _stats(self, values: np.ndarray) -> tuple[float, float]:
        if self.scaler == "standard":
            center, scale = float(values.mean()), float(values.std())
        else:
            center, scale = float(values.min()), float(values.max() - values.min())
        return center, (scale if scale > 1e-12 else 1.0)

    # --- applying ------------------------------------------------------------------------------

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Sample shape of the model input that `transform` produces."""
        if self.kind == "image":
            return tuple(self.input_shape)
        return (len(self.numeric) + sum(len(c) for c in self.categories),)

    @property
    def output_names(self) -> list[str]:
        """Names of the model-input features (numeric columns, then `column=category` one-hots)."""
        if self.kind == "image":
            return list(self.feature_names)
        names = [self.feature_names[j] for j in self.numeric]
        for j, cats in zip(self.categorical, self.categories):
            names += [f"{self.feature_names[j]}={c}" for c in cats]
        return names

    def metadata(self) -> dict[str, list[str]]:
        """Column -> category list, as recorded in the ONNX metadata `categories`."""
        return {self.feature_names[j]: list(c) for j, c in zip(self.categorical, self.categories)}

    def encode(self, X_raw: np.ndarray) -> np.ndarray:
        """Raw features (object arrays with category strings, or numbers) -> the FP32 tensor the
        served model takes: categories become their codes, missing values NaN."""
        self._check_fitted()
        if X_raw.dtype != object:
            X = np.asarray(X_raw, dtype=np.float32)
        else:
            X = np.empty(X_raw.shape, dtype=np.float32)
            for j in self.numeric:
                X[:, j] = [np.nan if v is None else float(v) for v in X_raw[:, j]]
            for j, cats in zip(self.categorical, self.categories):
                index = {c: k for k, c in enumerate(cats)}
                X[:, j] = [index.get(v, np.nan) if isinstance(v, str) else
                           (np.nan if v is None else float(v)) for v in X_raw[:, j]]
        if tuple(X.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"X_raw: samples of shape {tuple(X.shape[1:])}, expected {tuple(self.input_shape)}")
        return X

    def transform(self, X_raw: np.ndarray) -> np.ndarray:
        """Raw (or encoded) features -> float32 model input (numpy twin of `to_torch()`)."""
        X = self.encode(X_raw)
        if self.kind == "image":
            X = np.where(np.isnan(X), np.float32(self.fill[0]), X)
            return ((X - np.float32(self.center[0])) / np.float32(self.scale[0])).astype(np.float32)
        parts = []
        if self.numeric:
            num = X[:, self.numeric]
            num = np.where(np.isnan(num), np.asarray(self.fill, np.float32), num)
            num = (num - np.asarray(self.center, np.float32)) / np.asarray(self.scale, np.float32)
            if self.clip > 0:  # a near-constant column (a rarely lit pixel) would otherwise give huge values
                num = np.clip(num, np.float32(-self.clip), np.float32(self.clip))
            parts.append(num)
        for j, cats, mode in zip(self.categorical, self.categories, self.mode):
            code = X[:, j:j + 1]
            with np.errstate(invalid="ignore"):
                valid = (code >= -0.5) & (code < len(cats) - 0.5)
            code = np.where(valid, np.round(code), np.float32(mode))
            parts.append((code == np.arange(len(cats), dtype=np.float32)).astype(np.float32))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_torch(self):
        """A torch module doing exactly `transform` on encoded FP32 input (for the ONNX graph)."""
        self._check_fitted()
        from trainer.data.torch_preprocess import PreprocessModule
        return PreprocessModule(self)

    # --- persistence ---------------------------------------------------------------------------

    def state(self) -> dict:
        self._check_fitted()
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Preprocessor:
        # states saved before `clip` existed were exported without clipping: keep them that way
        return cls(**{"clip": 0.0, **state})

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("Preprocessor: call fit() first")
