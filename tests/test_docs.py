"""The docs keep their promises: the README's two commands, and the settings tables of
docs/operations.md equal what the settings classes say today (regenerate with `make docs`)."""

from __future__ import annotations

import re
from pathlib import Path

from pseudoserve.settings_doc import BEGIN, END, SECTIONS, render

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make demo$", readme, re.MULTILINE) and re.search(r"^make test$", readme, re.MULTILINE)


def test_operations_settings_tables_are_current() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text[text.index(BEGIN): text.index(END) + len(END)]
    assert block == render(), "docs/operations.md is stale: run `make docs`"


def test_every_setting_is_documented_with_a_meaning() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) > 50 and len(SECTIONS) == 3
    undocumented = [row.split("|")[1].strip() for row in rows if not row.rsplit("|", 2)[-2].strip()]
    assert not undocumented, f"settings without a docstring: {undocumented}"
