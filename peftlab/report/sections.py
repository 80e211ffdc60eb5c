"""Replace one ``## Heading`` section of a Markdown file (BENCHMARKS.md), leaving the others:
each benchmark script owns its section and re-running it rewrites only that."""

from __future__ import annotations

from pathlib import Path


def replace_section(text: str, heading: str, body: str) -> str:
    """``body`` (starting with ``heading``) replaces that section, or is appended when absent."""
    start = text.find(heading)
    if start < 0:
        return text.rstrip() + "\n\n" + body
    end = text.find("\n## ", start + len(heading))
    return text[:start] + body + (text[end + 1 :] if end >= 0 else "")


def write_section(path: Path, heading: str, body: str, title: str = "# Benchmarks\n") -> None:
    """Replace (or append) one section of the Markdown file at ``path``, creating it if absent."""
    text = path.read_text(encoding="utf-8") if path.exists() else title
    path.write_text(replace_section(text, heading, body.rstrip() + "\n\n").rstrip() + "\n", encoding="utf-8")


def split_sections(text: str) -> tuple[str, dict[str, str]]:
    """(everything before the first ``## `` heading, {heading line: its whole section text})."""
    starts = [i for i in range(len(text)) if text.startswith("## ", i) and (i == 0 or text[i - 1] == "\n")]
    if not starts:
        return text, {}
    sections = {}
    for a, b in zip(starts, starts[1:] + [len(text)]):
        chunk = text[a:b]
        sections[chunk.split("\n", 1)[0]] = chunk
    return text[: starts[0]], sections


def changed_sections(before: str, after: str) -> dict[str, str]:
    """Sections of ``after`` that are new or differ from ``before`` (what one script wrote)."""
    _, old = split_sections(before)
    _, new = split_sections(after)
    return {h: body for h, body in new.items() if old.get(h, "").rstrip() != body.rstrip()}


def replace_header(text: str, header: str) -> str:
    """``header`` replaces everything before the first ``## `` section."""
    _, sections = split_sections(text)
    return header.rstrip() + "\n\n" + "".join(s.rstrip() + "\n\n" for s in sections.values()).rstrip() + "\n"
