"""README's "Methods" table lists every registered method (what ``peftlab list`` shows), one row
each: a new method cannot be left out of it."""

from __future__ import annotations

import re
from pathlib import Path

from peftlab.methods import METHODS


def methods_table_rows() -> list[str]:
    """The method name (first cell, in backticks) of each row of README's "### Methods" table."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("\n### Methods\n", 1)[1].split("\n#", 1)[0]
    return [m.group(1) for line in section.splitlines() if (m := re.match(r"\| `([a-z0-9_]+)`", line))]


def test_every_registered_method_has_one_row_in_the_readme_table():
    rows = methods_table_rows()
    assert sorted(rows) == METHODS.names(), f"missing: {set(METHODS.names()) - set(rows)}, unknown: {set(rows) - set(METHODS.names())}"


def test_readme_methods_table_is_generated_from_the_methods_own_rows():
    """Each method describes itself once (``Method.readme`` in its module); the README table is
    that text (regenerate: ``python -m peftlab.methods.readme README.md``)."""
    from peftlab.methods.readme import readme_table, table

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start, end = readme_table(text)
    assert text[start:end] == table()
