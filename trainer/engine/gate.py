"""The promotion gate: a student replaces the teacher only if it is better on held-out labels.

Called by `round.py` after both models are evaluated on the holdout. Two rules, both configured
in `EngineSettings`: the student's accuracy must reach the teacher's plus `promotion_margin`, and
no class's recall may fall by more than `max_recall_drop`. Classes absent from the holdout are
not judged. The reason string names the failing rule and class, for logs and reports.
"""

from __future__ import annotations

import numpy as np

from trainer.engine.evaluation import Evaluation
from trainer.engine.settings import EngineSettings


def gate(teacher: Evaluation, student: Evaluation, settings: EngineSettings,
         class_names: list[str] | None = None) -> tuple[bool, str]:
    """(promote?, human-readable reason)."""
    need = teacher.accuracy + settings.promotion_margin
    if student.accuracy + 1e-12 < need:
        return False, (f"student holdout accuracy {student.accuracy:.4f} < teacher {teacher.accuracy:.4f}"
                       f" + margin {settings.promotion_margin:.4f}")
    present = np.flatnonzero(teacher.support > 0)
    drops = teacher.recall[present] - student.recall[present]
    if len(drops):
        worst = int(np.argmax(drops))
        if drops[worst] > settings.max_recall_drop + 1e-12:
            c = int(present[worst])
            name = class_names[c] if class_names else str(c)
            return False, (f"class {name} recall dropped {drops[worst]:.4f} ({teacher.recall[c]:.4f} -> "
                           f"{student.recall[c]:.4f}) > max_recall_drop {settings.max_recall_drop:.4f}")
    return True, (f"student holdout accuracy {student.accuracy:.4f} >= teacher {teacher.accuracy:.4f}"
                  f" + margin {settings.promotion_margin:.4f}; no class recall drop > {settings.max_recall_drop:.4f}")
