"""Structured logs: `json` writes one JSON object per line with the call's `extra` fields;
an unknown format is refused naming the setting."""

from __future__ import annotations

import json
import logging

import pytest

from service.logs import configure_logging


def test_json_lines_carry_extra_fields(capsys) -> None:
    configure_logging("INFO", "json")
    try:
        logging.getLogger("trainer.online").info("round %d promoted", 3, extra={"round": 3, "outcome": "promoted"})
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["message"] == "round 3 promoted" and record["round"] == 3 and record["outcome"] == "promoted"
        assert record["level"] == "INFO" and record["logger"] == "trainer.online" and "asctime" in record
    finally:
        configure_logging("WARNING", "text")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log_format"):
        configure_logging("INFO", "xml")
