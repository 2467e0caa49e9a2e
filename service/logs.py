"""Log set-up shared by `pseudoserve serve` and `pseudoserve trainer` (the trainer imports it).

`text` is for people at a terminal; `json` writes one JSON object per line (python-json-logger)
with the standard fields plus whatever a call passes in `extra=`, e.g. the trainer's round
summaries carry `round`, `outcome`, `teacher_version`, ... as fields a log pipeline can query.
"""

from __future__ import annotations

import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")


def configure_logging(level: str, fmt: str = "text") -> None:
    """Root logger to stderr in the given format; replaces handlers set before (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger"}))
    elif fmt == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ValueError(f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
