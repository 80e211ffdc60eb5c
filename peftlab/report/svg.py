"""Tiny SVG primitives: every figure in the report is inline SVG built from these.

Hand-written rather than matplotlib: the report then needs no plotting dependency, no fonts,
no base64 blobs, and the text in a figure stays selectable and searchable. Every string that
reaches the SVG goes through :func:`esc` (labels come from user data).
"""

from __future__ import annotations

import math
from html import escape

#: colour-blind-safe qualitative palette (Okabe-Ito, then Tableau extras)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF"]
FONT = "font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif"


def esc(s: object) -> str:
    return escape(str(s), quote=True)


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def svg(width: int, height: int, body: list[str], title: str) -> str:
    """An inline SVG element with an accessible title; sized in pixels, scalable by CSS.

    No ``xmlns``: inline SVG in HTML does not need it, and the page then holds no URL at all.
    """
    return (f'<svg class="plot" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" style="{FONT}"><title>{esc(title)}</title>'
            + "".join(body) + "</svg>")


def text(x: float, y: float, s: object, anchor: str = "start", size: int = 11, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{extra}>'
            f"{esc(s)}</text>")


def line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#999", extra: str = "") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"{extra}/>'


def polyline(points: list[tuple[float, float]], stroke: str, width: float = 2, extra: str = "") -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline points="{pts}" fill="none" stroke="{stroke}" stroke-width="{width}"{extra}/>'


def circle(x: float, y: float, r: float, fill: str, tip: str, extra: str = "") -> str:
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}"{extra}><title>{esc(tip)}</title></circle>'


def rect(x: float, y: float, w: float, h: float, fill: str, tip: str = "", extra: str = "") -> str:
    inner = f"<title>{esc(tip)}</title>" if tip else ""
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
            f'fill="{fill}"{extra}>{inner}</rect>')


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 12))
        t += step
    return ticks


def padded_range(values: list[float], pad: float = 0.08, floor: float | None = None,
                 ceil: float | None = None) -> tuple[float, float]:
    """A value range with some air, clipped to [floor, ceil]; never empty."""
    lo, hi = min(values), max(values)
    span = hi - lo or max(abs(hi), 1.0) * 0.1
    lo, hi = lo - pad * span, hi + pad * span
    if floor is not None:
        lo = max(lo, floor)
    if ceil is not None:
        hi = min(hi, ceil)
    return (lo, hi) if hi > lo else (lo, lo + 1)


def fmt_tick(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


def short(s: str, n: int = 18) -> str:
    """Shorten a label for an axis; the full text stays in the element's tooltip."""
    return s if len(s) <= n else s[: n - 1] + "\u2026"
