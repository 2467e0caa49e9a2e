"""Preprocessing: numpy `transform`, the torch module and the exported ONNX graph agree (NaNs,
categorical codes, unknown codes, images); statistics are right; state round-trips; the holdout
split is stratified and deterministic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trainer.data.loaders import Table, load
from trainer.data.preprocess import Preprocessor
from trainer.data.splits import stratified_holdout, stratified_subset
from trainer.export import export_onnx, read_metadata

torch.set_num_threads(1)


@dataclass
class TinyClassifier:
    module: torch.nn.Module


def mixed_table(tmp_path: Path) -> Table:
    rows = ["a,colour,b,label"]
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue"]
    for i in range(40):
        a = "" if i % 7 == 0 else f"{rng.normal(5, 2):.3f}"
        colour = "" if i % 9 == 0 else colours[i % 3 if i % 5 else 0]
        rows.append(f"{a},{colour},{rng.uniform(-1, 1):.3f},{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return load(tmp_path / "m.csv", label_column="label")


def test_statistics_imputation_and_one_hot(tmp_path: Path) -> None:
    t = mixed_table(tmp_path)
    pre = Preprocessor(scaler="standard").fit([t])
    a = t.X[:, 0].astype(float)
    median = np.nanmedian(a)
    assert pre.fill[0] == pytest.approx(median)
    imputed = np.where(np.isnan(a), median, a)
    assert pre.center[0] == pytest.approx(imputed.mean()) and pre.scale[0] == pytest.approx(imputed.std())
    assert pre.categories == [["blue", "green", "red"]]
    assert pre.categories[0][pre.mode[0]] == "red"  # i % 5 == 0 forces red: the most frequent
    out = pre.transform(t.X)
    assert out.shape == (40, 5) and pre.output_names == ["a", "b", "colour=blue", "colour=green", "colour=red"]
    assert np.allclose(out[:, 2:].sum(axis=1), 1.0)  # exactly one category per row, missing -> mode
    assert np.all(out[[0, 9, 18], 4] == 1.0)  # missing colours (i % 9 == 0) became red
    assert abs(out[:, 0].mean()) < 1e-5 and abs(out[:, 0].std() - 1) < 1e-4


def test_minmax_images(tmp_path: Path) -> None:
    X = np.random.default_rng(1).integers(0, 256, (6, 1, 5, 5)).astype(np.float32)
    X[0, 0, 0, 0] = np.nan
    t = Table(X=X, y=None, feature_names=["image"], class_names=None, kind="image", source=tmp_path / "x.npz")
    pre = Preprocessor(scaler="minmax").fit([t])
    out = pre.transform(X)
    assert out.shape == X.shape and np.nanmin(out) >= 0 and out.max() == pytest.approx(1.0)
    assert not np.isnan(out).any()
    with torch.no_grad():
        torch_out = pre.to_torch()(torch.from_numpy(X)).numpy()
    assert np.abs(torch_out - out).max() <= 1e-6


def test_state_round_trip_and_bad_scaler(tmp_path: Path) -> None:
    t = mixed_table(tmp_path)
    pre = Preprocessor(scaler="minmax").fit([t])
    again = Preprocessor.from_state(pre.state())
    assert np.array_equal(again.transform(t.X), pre.transform(t.X))
    old = {k: v for k, v in pre.state().items() if k != "clip"}  # saved before clipping existed
    assert Preprocessor.from_state(old).clip == 0.0
    with pytest.raises(ValueError, match="scaler: unknown scaler 'robust'"):
        Preprocessor(scaler="robust")


def test_onnx_parity_with_nans_categoricals_and_unknown_codes(tmp_path: Path) -> None:
    t = mixed_table(tmp_path)
    pre = Preprocessor().fit([t])
    torch.manual_seed(0)
    clf = TinyClassifier(torch.nn.Sequential(torch.nn.Linear(pre.output_shape[0], 8), torch.nn.ReLU(),
                                             torch.nn.Linear(8, 2)))
    diff = export_onnx(clf, pre, tmp_path / "model.onnx", class_names=["no", "yes"], feature_names=t.feature_names,
                       parity_sample=t.X)
    assert diff <= 1e-4
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["class_names"] == ["no", "yes"] and meta["feature_names"] == ["a", "colour", "b"]
    assert meta["categories"] == {"colour": ["blue", "green", "red"]} and "pseudoserve_version" in meta
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    # clients send codes; NaN, -1, 7 and 1.2 (rounds to 1) are all valid inputs of the graph
    raw = np.array([[np.nan, 0, 0.5], [4.0, np.nan, np.nan], [4.0, -1, 0.1], [4.0, 7, 0.1], [4.0, 1.2, 0.1],
                    [1e4, 0, -1e4]], np.float32)  # the last row: far outliers, clipped to +-clip
    (onnx_out,) = session.run(["probabilities"], {"input": raw})
    with torch.no_grad():
        model_in = pre.transform(raw)
        expected = torch.softmax(clf.module(torch.from_numpy(model_in)), dim=1).numpy()
        via_torch = pre.to_torch()(torch.from_numpy(raw)).numpy()
    assert np.abs(via_torch - model_in).max() <= 1e-6
    assert np.abs(onnx_out - expected).max() <= 1e-5
    assert np.array_equal(model_in[1, 2:], [0, 0, 1]) and np.array_equal(model_in[3, 2:], [0, 0, 1])
    assert np.array_equal(model_in[4, 2:], [0, 1, 0])
    assert np.array_equal(model_in[5, :2], [pre.clip, -pre.clip]) and pre.clip == 5.0
    # dynamic batch axis: other batch sizes run
    assert session.run(None, {"input": np.repeat(raw, 13, axis=0)})[0].shape == (78, 2)
    assert [d for d in session.get_inputs()[0].shape][1:] == [3]


def test_stratified_holdout_is_stratified_deterministic_and_disjoint() -> None:
    y = np.array([0] * 10 + [1] * 4 + [2] * 2 + [3])
    train, hold = stratified_holdout(y, 0.25, seed=3)
    assert set(train).isdisjoint(hold) and len(train) + len(hold) == len(y)
    assert np.bincount(y[hold], minlength=4).tolist() == [2, 1, 1, 0]  # never the last sample of a class
    again = stratified_holdout(y, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(hold, again[1])
    assert len(stratified_holdout(y, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="holdout_fraction"):
        stratified_holdout(y, 1.0, seed=0)
    sub = stratified_subset(y, 2, seed=0)
    assert np.bincount(y[sub]).tolist() == [2, 2, 2, 1]
