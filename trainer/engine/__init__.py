"""The self-training engine: classifiers, pseudo-label selection, generators, rounds and the gate.

Public API used by the offline CLI, the online trainer, reports and export (see
docs/architecture.md and the engine contract): `EngineSettings`, `Classifier`,
`train_supervised`, `evaluate`/`Evaluation`, `gate`, `run_round`/`RoundResult`, `self_train`.
"""

from trainer.engine.evaluation import Evaluation, evaluate
from trainer.engine.gate import gate
from trainer.engine.models import Classifier
from trainer.engine.round import RoundResult, run_round
from trainer.engine.self_train import self_train
from trainer.engine.settings import EngineSettings, SettingsError
from trainer.engine.training import train_supervised

__all__ = [
    "Classifier",
    "EngineSettings",
    "Evaluation",
    "RoundResult",
    "SettingsError",
    "evaluate",
    "gate",
    "run_round",
    "self_train",
    "train_supervised",
]
