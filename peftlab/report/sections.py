"""Replace one ``## Heading`` section of a Markdown file (BENCHMARKS.md), leaving the others:
each benchmark script owns its section and re-running it rewrites only that."""

from __future__ import annotations


def replace_section(text: str, heading: str, body: str) -> str:
    """``body`` (starting with ``heading``) replaces that section, or is appended when absent."""
    start = text.find(heading)
    if start < 0:
        return text.rstrip() + "\n\n" + body
    end = text.find("\n## ", start + len(heading))
    return text[:start] + body + (text[end + 1 :] if end >= 0 else "")


def write_section(path, heading: str, body: str) -> None:
    """Replace (or append) one section of the Markdown file at ``path`` (BENCHMARKS.md), creating
    the file with a title when absent."""
    from pathlib import Path

    path = Path(path)
    text = (path.read_text(encoding="utf-8") if path.exists()
            else "# Benchmarks\n\nEvery number below comes from the command printed with it.\n")
    path.write_text(replace_section(text, heading, body), encoding="utf-8")
