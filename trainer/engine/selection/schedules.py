"""Confidence-threshold schedules, registered by name (`threshold_schedule`).

`linear`: start high and lower by `threshold_decay` per round down to `threshold_end`
(curriculum from the most certain pseudo-labels outwards; bounds kept in [0.5, 0.99]).
`percentile`: curriculum labeling (Cascante-Bonilla et al. 2021): accept the most confident
`percentile` % of the pool in round 0, twice that in round 1, and so on; the threshold is that
quantile of this round's confidences, clipped to [0.5, 0.99].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trainer.engine.settings import EngineSettings

LOW, HIGH = 0.5, 0.99


def linear(confidence: np.ndarray, *, round_index: int, settings: EngineSettings) -> float:
    t = settings.threshold_start - settings.threshold_decay * round_index
    return float(np.clip(max(t, settings.threshold_end), LOW, HIGH))


def percentile(confidence: np.ndarray, *, round_index: int, settings: EngineSettings) -> float:
    share = min(100.0, settings.percentile * (round_index + 1))
    if len(confidence) == 0:
        return HIGH
    return float(np.clip(np.percentile(confidence, 100.0 - share), LOW, HIGH))


SCHEDULES: dict[str, Callable[..., float]] = {"linear": linear, "percentile": percentile}


def get_schedule(name: str) -> Callable[..., float]:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"threshold_schedule: unknown {name!r}; valid: {', '.join(SCHEDULES)}") from None
