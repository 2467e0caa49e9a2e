"""Export a trained classifier, with its preprocessing baked in, to the ONNX file the service serves.

The graph is `Sequential(preprocessor.to_torch(), classifier.module, Softmax)`: one input `input`
(FP32, raw features `[-1, d]` with categories as codes, or images `[-1, C, H, W]`), one output
`probabilities` (FP32 `[-1, n_classes]`), dynamic batch axis, opset 17. The file is checked with
`onnx.checker`, run in onnxruntime on `parity_sample`, and compared with torch: a max abs
difference above 1e-4 (or any NaN) raises `ExportError` and leaves nothing at `path`.

Exporter: the TorchScript-based exporter (`dynamo=False`) works with torch 2.13 here and takes
~0.3 s; the dynamo exporter (needs onnxscript) also works but takes ~5 s and converts down from
opset 18, so it is only the fallback. metadata_props: `class_names`, `feature_names`,
`categories` (column -> category list; clients send the index), `input_kind` (table|image) and
`pseudoserve_version`, all JSON except the last.

Called by `pseudoserve fit`/`bootstrap` and by the online trainer before `publish_version`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The ONNX export failed or does not reproduce torch's output."""


def build_serving_module(classifier, preprocessor):
    """The torch module the ONNX graph is made from: preprocessing, classifier, softmax (CPU, eval)."""
    from torch import nn

    module = copy.deepcopy(classifier.module).cpu().eval()
    return nn.Sequential(preprocessor.to_torch(), module, nn.Softmax(dim=1)).eval()


def export_onnx(classifier, preprocessor, path: str | Path, *, class_names: Sequence[str],
                feature_names: Sequence[str], opset: int = 17, parity_sample: np.ndarray) -> float:
    """Write `path` (model.onnx) and return the max abs difference vs torch on `parity_sample`
    (raw features as loaded, or already encoded FP32)."""
    import onnx
    import torch

    from pseudoserve import __version__

    if opset < 17:
        raise ExportError(f"opset: must be >= 17, got {opset}")
    path = Path(path)
    sample = preprocessor.encode(np.asarray(parity_sample))
    if len(sample) == 0:
        raise ExportError("parity_sample: empty")
    model = build_serving_module(classifier, preprocessor)
    with torch.no_grad():
        expected = model(torch.from_numpy(sample)).numpy()
    if expected.shape[1] != len(class_names):
        raise ExportError(f"class_names: {len(class_names)} names for a model with {expected.shape[1]} outputs")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _torch_export(model, torch.from_numpy(sample[: min(len(sample), 2)]), tmp, opset)
        proto = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the exported graph is invalid: {exc}") from None
        meta = {
            "class_names": json.dumps([str(c) for c in class_names]),
            "feature_names": json.dumps([str(f) for f in feature_names]),
            "categories": json.dumps(preprocessor.metadata()),
            "input_kind": json.dumps(preprocessor.kind),
            "pseudoserve_version": __version__,
        }
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp))
        diff = _parity(tmp, sample, expected)
        if not diff <= PARITY_TOLERANCE:
            raise ExportError(f"ONNX output differs from torch: max abs diff {diff:.3g} > {PARITY_TOLERANCE:g} "
                              f"on {len(sample)} samples")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s (opset %d, parity max abs diff %.2e)", path, opset, diff)
    return diff


def _torch_export(model, example, tmp: Path, opset: int) -> None:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["probabilities"],
                              opset_version=opset, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}})
        return
    except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
        log.warning("TorchScript ONNX exporter failed (%s); trying the dynamo exporter", exc)
    try:
        batch = torch.export.Dim("batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["probabilities"],
                              opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc


def _parity(onnx_path: Path, sample: np.ndarray, expected: np.ndarray) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        (got,) = session.run(["probabilities"], {"input": sample})
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot run the exported model: {exc}") from exc
    if got.shape != expected.shape:
        raise ExportError(f"ONNX output shape {got.shape} differs from torch's {expected.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - expected)))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metadata(path: str | Path) -> dict[str, object]:
    """The pseudoserve metadata of an exported model, JSON values decoded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, object] = {}
    for prop in proto.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except ValueError:
            out[prop.key] = prop.value
    return out
