"""`service.model`: which output holds a version's class probabilities (the confidence metrics and
capture both read the one it names)."""

from __future__ import annotations

from service.model import _probabilities_index, tensor_spec


def _spec(name: str, datatype: str, dims: list[int]):
    return tensor_spec(name, datatype, dims, batch=True)


def test_the_output_named_probabilities_else_the_first_2d_float_one() -> None:
    logits, probs = _spec("logits", "FP64", [3]), _spec("probabilities", "FP32", [3])
    ids, scores = _spec("ids", "INT64", [3]), _spec("scores", "FP32", [3, 4])
    assert _probabilities_index([logits, ids, probs]) == 2  # by name, even after a 2-D float output
    assert _probabilities_index([ids, scores, logits]) == 2  # not the integer one, not the 3-D one
    assert _probabilities_index([ids, scores]) is None
