"""``peftlab report``: collect runs, render report.md and report.html, write both atomically."""

from __future__ import annotations

from pathlib import Path

from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import atomic_write_text
from peftlab.report.collect import collect
from peftlab.report.facts import DEFAULT_TRADEOFF, TRADEOFFS
from peftlab.report.render_html import render_html
from peftlab.report.render_md import render_md

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def default_out(paths: list[Path]) -> Path:
    """One folder: the report lives in it (beside the results); several: ./report in the cwd."""
    if len(paths) == 1:
        return paths[0].parent if paths[0].is_file() else paths[0]
    return Path("report")


def check_pareto(pareto: str) -> str:
    """``--pareto``'s value, or a one-line error naming the choices (before any run is read)."""
    if pareto not in TRADEOFFS:
        raise PeftlabError(f"--pareto {pareto}: choose one of {', '.join(TRADEOFFS.names())}")
    return pareto


def write_report(paths: list[Path], out: Path | None = None, pareto: str = DEFAULT_TRADEOFF) -> tuple[Path, Path]:
    """``pareto``: the trade-off report.md names and report.html draws first (facts.TRADEOFFS)."""
    check_pareto(pareto)
    rows = collect(paths)
    out = out if out is not None else default_out(paths)
    md, html = out / REPORT_MD, out / REPORT_HTML
    try:
        atomic_write_text(md, render_md(rows, pareto))
        atomic_write_text(html, render_html(rows, pareto=pareto))
    except OSError as exc:
        raise PeftlabError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return md, html
