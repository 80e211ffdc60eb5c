"""README's methods table, generated from the methods' own rows (``Method.readme``).

The table in README.md is this module's output, so a method is described once, in its module:
``python -m peftlab.methods.readme README.md`` rewrites the table, tests/test_readme.py checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from peftlab.methods import METHODS
from peftlab.methods.base import Method

HEADER = "| method | on | trains | closed form for the trainable count |\n|---|---|---|---|\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe inside a cell must not end it


def row(method: Method) -> str:
    r = method.readme
    name = f"`{method.name}`" + (f" ({r.via})" if r.via else "")
    return "| " + " | ".join([name, *map(_cell, (r.on, r.trains, r.closed_form))]) + " |\n"


def table() -> str:
    """Every registered method's row, in registration order, under the table's header."""
    return HEADER + "".join(row(m) for m in METHODS.in_order())


def readme_table(text: str) -> tuple[int, int]:
    """(start, end) of the methods table in README text: the first table after "### Methods"."""
    section = text.index("\n### Methods\n")
    start = text.index("\n| method |", section) + 1
    end = text.index("\n\n", start) + 1
    return start, end


def rewrite(path: Path) -> bool:
    """Write the generated table into the README at ``path``; whether anything changed."""
    text = path.read_text(encoding="utf-8")
    start, end = readme_table(text)
    new = text[:start] + table() + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    print("rewrote" if rewrite(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")) else "unchanged")
