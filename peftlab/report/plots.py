"""The report's figures as inline SVG strings: Pareto plot, curves, bars, confusion matrix.

Each function takes plain numbers and labels (no RunResult), so it is testable on its own and
usable by any runner. Missing data is the caller's business: a figure gets only real points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from peftlab.report.svg import (circle, colour, fmt_tick, line, nice_ticks, padded_range, polyline,
                                rect, short, svg, text)


#: above this many classes a confusion matrix stops being readable on a page
MAX_CONFUSION_CLASSES = 40


@dataclass(frozen=True)
class Point:
    label: str
    #: what the row cost on the plot's x axis (trainable parameters, MB, seconds); 0 = nothing
    #: (in-context and zero-shot rows train nothing and save nothing)
    cost: float
    accuracy: float
    colour: str | None = None  # the row's colour in every figure (default: by position)


def pareto_frontier(points: list[Point]) -> list[int]:
    """Indices of the points no other point beats on both lower cost and higher accuracy.

    Ordered by cost: the frontier is then drawn left to right as a staircase.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i].cost, -points[i].accuracy))
    front, best = [], -math.inf
    for i in order:
        if points[i].accuracy > best:
            front.append(i)
            best = points[i].accuracy
    return front


def _count(v: float) -> str:
    return f"{v:,.0f} trainable"


def pareto_svg(points: list[Point], baseline: float | None = None, title: str = "Accuracy vs trainable parameters",
               xlabel: str = "trainable parameters", tip: Callable[[float], str] = _count,
               size: tuple[int, int] = (640, 380)) -> str:
    """Accuracy against a cost (``xlabel``; trainable parameters by default) on a log axis, with
    the frontier as a staircase; ``tip`` words a point's cost in its tooltip.

    log(0) does not exist, so runs that cost nothing sit in a separate "0" slot left of a break
    in the axis, still on the frontier computation (nothing is the cheapest possible).
    """
    (W, H), L, R, T, B = size, 60, 150, 30, 48
    if not points:
        return svg(W, 60, [text(10, 30, "no finished runs to plot")], title)
    has_zero = any(p.cost <= 0 for p in points)
    pos = [p.cost for p in points if p.cost > 0] or [1]
    lo_e, hi_e = math.floor(math.log10(min(pos))), math.ceil(math.log10(max(pos)))
    hi_e = max(hi_e, lo_e + 1)
    x0 = L + (50 if has_zero else 0)  # the log axis starts right of the zero slot
    accs = [p.accuracy for p in points] + ([baseline] if baseline is not None else [])
    y_lo, y_hi = padded_range(accs, floor=0.0, ceil=1.0)

    def px(n: float) -> float:
        if n <= 0:
            return L + 18
        return x0 + (math.log10(n) - lo_e) / (hi_e - lo_e) * (W - R - x0)

    def py(a: float) -> float:
        return T + (y_hi - a) / (y_hi - y_lo) * (H - T - B)

    body = [line(x0, H - B, W - R, H - B, "#444"), line(L, T, L, H - B, "#444")]
    for e in range(lo_e, hi_e + 1):
        x = px(10**e)
        body += [line(x, T, x, H - B, "#eee"), text(x, H - B + 15, f"1e{e}" if abs(e) > 3 else f"{10**e:g}", "middle")]
    for t in nice_ticks(y_lo, y_hi):
        body += [line(L, py(t), W - R, py(t), "#eee"), text(L - 6, py(t) + 4, fmt_tick(t), "end")]
    if has_zero:
        body += [text(L + 18, H - B + 15, "0", "middle"),
                 line(x0 - 16, H - B - 5, x0 - 10, H - B + 5, "#444"), line(x0 - 12, H - B - 5, x0 - 6, H - B + 5, "#444")]
    body += [text((x0 + W - R) / 2, H - 10, f"{xlabel} (log scale)", "middle", 12),
             text(14, (T + H - B) / 2, "accuracy", "middle", 12, f' transform="rotate(-90 14 {(T + H - B) / 2:.1f})"')]
    if baseline is not None:
        body += [line(L, py(baseline), W - R, py(baseline), "#888", ' stroke-dasharray="5 4"'),
                 text(W - R + 4, py(baseline) + 4, "majority class", size=10, extra=' fill="#666"')]
    front = pareto_frontier(points)
    stairs: list[tuple[float, float]] = []
    for i in front:
        x, y = px(points[i].cost), py(points[i].accuracy)
        if stairs:
            stairs.append((x, stairs[-1][1]))
        stairs.append((x, y))
    if stairs:
        stairs.append((W - R, stairs[-1][1]))
        body.append(polyline(stairs, "#D55E00", 1.5, ' stroke-dasharray="6 3" class="frontier"'))
    placed = [(px(p.cost) - 5, py(p.accuracy) + 4, 10.0) for p in points]  # labels avoid the points too
    for i, p in enumerate(points):
        x, y = px(p.cost), py(p.accuracy)
        on = i in front
        name = short(p.label, 22)
        body += [circle(x, y, 5 if on else 4, p.colour or colour(i), f"{p.label}: accuracy {p.accuracy:.4f}, {tip(p.cost)}",
                        ' stroke="#000" stroke-width="1.2"' if on else ""),
                 text(x + 7, label_y(placed, x + 7, y - 6, 6.0 * len(name)), name, size=10)]
    body.append(text(W - R + 4, T + 10, "- - frontier", size=10, extra=' fill="#D55E00"'))
    return svg(W, H, body, title)


def label_y(placed: list[tuple[float, float, float]], x: float, y: float, width: float) -> float:
    """A baseline for a point's label that does not overlap labels already placed (nearest free slot)."""
    for dy in (0, 12, -12, 24, -24, 36, -36, 48, -48):
        cand = y + dy
        if not any(abs(cand - py) < 11 and x < px + pw and px < x + width for px, py, pw in placed):
            placed.append((x, cand, width))
            return cand
    placed.append((x, y, width))
    return y


def line_svg(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
             y_floor: float | None = None, y_ceil: float | None = None, width: int = 340) -> str:
    """Several named series against a shared x (epochs); a point marks every measured value."""
    W, H, L, R, T, B = width, 240, 48, 12, 26, 58
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y)]
    if not pts:
        return svg(W, 60, [text(10, 30, f"{title}: no values")], title)
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = padded_range(ys, floor=y_floor, ceil=y_ceil)

    def px(x: float) -> float:
        return L + (x - x_lo) / (x_hi - x_lo) * (W - L - R)

    def py(y: float) -> float:
        return T + (y_hi - y) / (y_hi - y_lo) * (H - T - B)

    body = [text(L, 16, title, size=12, extra=' font-weight="600"'),
            line(L, H - B, W - R, H - B, "#444"), line(L, T, L, H - B, "#444")]
    for t in nice_ticks(y_lo, y_hi, 4):
        body += [line(L, py(t), W - R, py(t), "#eee"), text(L - 5, py(t) + 4, fmt_tick(t), "end", 10)]
    for t in nice_ticks(x_lo, x_hi, min(6, int(x_hi - x_lo) + 1)):
        body += [text(px(t), H - B + 14, fmt_tick(t), "middle", 10)]
    body.append(text((L + W - R) / 2, H - B + 28, xlabel, "middle", 11))
    for i, (name, s) in enumerate(series.items()):
        ok = [(px(x), py(y)) for x, y in s if y is not None and math.isfinite(y)]
        if len(ok) > 1:
            body.append(polyline(ok, colour(i)))
        body += [circle(x, y, 3, colour(i), f"{name}") for x, y in ok]
        lx = L + (i % 3) * ((W - L) / 3)
        ly = H - 12 - (i // 3) * 12
        body += [rect(lx, ly - 8, 10, 3, colour(i)), text(lx + 13, ly - 4, short(name, 14), size=10)]
    return svg(W, H, body, f"{title} ({ylabel})")


def hbar_svg(items: list[tuple[str, float]], title: str, unit: str, fmt: str = ".1f",
             colours: dict[str, str] | None = None) -> str:
    """Horizontal bars, one per row: long labels fit, and bars compare by length at a glance."""
    items = [(k, v) for k, v in items if v is not None and math.isfinite(v)]
    colours = colours or {}
    W, row_h, L, R, T = 420, 20, 130, 70, 26
    if not items:
        return svg(W, 50, [text(10, 30, f"{title}: no values")], title)
    H = T + row_h * len(items) + 8
    top = max(v for _, v in items) or 1.0
    body = [text(8, 16, f"{title} ({unit})", size=12, extra=' font-weight="600"')]
    for i, (label, v) in enumerate(items):
        y = T + i * row_h
        w = (W - L - R) * max(v, 0) / top
        body += [text(L - 6, y + 13, short(label, 20), "end", 10),
                 rect(L, y + 3, w, row_h - 6, colours.get(label, colour(i)), f"{label}: {v:{fmt}} {unit}"),
                 text(L + w + 4, y + 13, f"{v:{fmt}}", size=10)]
    return svg(W, H, body, f"{title} ({unit})")


def confusion_svg(labels: list[str], matrix: list[list[int]], title: str = "Confusion matrix") -> str:
    """Counts in cells shaded by the row's share (recall view): rows are true, columns predicted."""
    n = len(matrix)
    if n == 0 or any(len(r) != n for r in matrix):
        return svg(300, 50, [text(10, 30, "no confusion matrix recorded")], title)
    if n > MAX_CONFUSION_CLASSES:
        return nothing_svg(f"{n} classes: too many to draw a readable matrix (see results.json)")
    names = labels if len(labels) == n else [str(i) for i in range(n)]
    cell = max(22, min(48, 360 // n))
    L, T = 110, 40
    W, H = L + cell * n + 20, T + cell * n + 12 + 7 * min(14, max(len(s) for s in names))
    body = [text(L + cell * n / 2, 16, "predicted", "middle", 11), text(12, T + cell * n / 2, "true", "middle", 11,
            f' transform="rotate(-90 12 {T + cell * n / 2:.1f})"')]
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        body.append(text(L - 6, T + i * cell + cell / 2 + 4, short(names[i], 16), "end", 10))
        for j, v in enumerate(row):
            share = v / total
            fill = f"rgba(0,114,178,{0.08 + 0.92 * share:.3f})"
            tip = f"true {names[i]}, predicted {names[j]}: {v} ({share:.0%} of the row)"
            body += [rect(L + j * cell, T + i * cell, cell - 1, cell - 1, fill, tip),
                     text(L + j * cell + cell / 2, T + i * cell + cell / 2 + 4, v, "middle", 10,
                          ' fill="#fff"' if share > 0.55 else "")]
    for j in range(n):
        x, y = L + j * cell + cell / 2, T + n * cell + 8
        body.append(text(x, y, short(names[j], 14), "end", 10, f' transform="rotate(-45 {x:.1f} {y:.1f})"'))
    return svg(W, H, body, title)


def reliability_svg(bins: list[tuple[float, float, int, float, float]], title: str = "Reliability") -> str:
    """A small reliability diagram: per confidence bin ``(low, high, count, mean confidence,
    accuracy)``, a bar of the bin's accuracy against the diagonal a calibrated row would follow;
    the gap to the diagonal is shaded, and empty bins draw nothing (their count is in the tooltip)."""
    W, H, L, R, T, B = 220, 200, 36, 8, 22, 34
    side_w, side_h = W - L - R, H - T - B

    def px(v: float) -> float:
        return L + v * side_w

    def py(v: float) -> float:
        return T + (1 - v) * side_h

    body = [text(L, 14, short(title, 30), size=11, extra=' font-weight="600"'),
            line(L, py(0), px(1), py(0), "#444"), line(L, py(0), L, py(1), "#444"),
            line(px(0), py(0), px(1), py(1), "#888", ' stroke-dasharray="4 3" class="diagonal"')]
    for t in (0.0, 0.5, 1.0):
        body += [text(L - 4, py(t) + 4, fmt_tick(t), "end", 9), text(px(t), py(0) + 12, fmt_tick(t), "middle", 9)]
    body += [text(px(0.5), H - 4, "confidence", "middle", 10),
             text(10, py(0.5), "accuracy", "middle", 10, f' transform="rotate(-90 10 {py(0.5):.1f})"')]
    for low, high, count, conf, acc in bins:
        if not count:
            continue
        x, w = px(low), max((high - low) * side_w - 1, 1.0)
        tip = f"confidence {low:.2f}-{high:.2f}: {count} examples, mean confidence {conf:.3f}, accuracy {acc:.3f}"
        body.append(rect(x, py(acc), w, py(0) - py(acc), "#0072B2", tip, ' class="bin"'))
        gap_top, gap_bottom = py(max(acc, conf)), py(min(acc, conf))
        body.append(rect(x, gap_top, w, gap_bottom - gap_top, "rgba(213,94,0,0.35)", extra=' class="gap"'))
    return svg(W, H, body, title)


def nothing_svg(message: str) -> str:
    """A placeholder figure that says why a plot is missing (so it is never silently absent)."""
    return svg(360, 40, [text(8, 24, message, size=11, extra=' fill="#666"')], message)
