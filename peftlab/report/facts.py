"""What a report says about a group of rows, computed once for both renderers.

Pure functions from collected rows to plain numbers and strings; any RunResult works, however
little it recorded (an in-context row without epochs or timing simply contributes less).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab.metrics import never_predicted
from peftlab.report.collect import Row, RunDir
from peftlab.report.plots import Point, pareto_frontier
from peftlab.report.svg import colour
from peftlab.results import BASELINE_METHOD, RunResult

#: environment keys shown as "hardware" rather than "versions"
HARDWARE_KEYS = ("device", "cuda", "threads", "platform")


def ok_rows(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.result.status == "ok"]


def row_colours(rows: list[Row]) -> dict[str, str]:
    """One colour per row, the same in every figure of the report (the baseline is grey)."""
    out, i = {}, 0
    for r in rows:
        if r.is_baseline:
            out[r.label] = "#9a9a9a"
        else:
            out[r.label] = colour(i)
            i += 1
    return out


def pareto_points(rows: list[Row]) -> list[tuple[Row, Point]]:
    """Finished, non-baseline rows that have both an accuracy and a parameter count."""
    out = []
    colours = row_colours(rows)
    for r in ok_rows(rows):
        res = r.result
        if r.is_baseline or res.accuracy is None or res.params is None:
            continue
        out.append((r, Point(r.label, res.params.trainable, res.accuracy, colours[r.label])))
    return out


def unplotted_labels(rows: list[Row]) -> list[str]:
    """Finished rows missing from the Pareto plot (no accuracy or no parameter count), to name them."""
    plotted = {r.label for r, _ in pareto_points(rows)}
    return [r.label for r in ok_rows(rows) if not r.is_baseline and r.label not in plotted]


def frontier_labels(rows: list[Row]) -> list[str]:
    pts = [p for _, p in pareto_points(rows)]
    return [pts[i].label for i in pareto_frontier(pts)]


def baseline_accuracy(rows: list[Row]) -> float | None:
    """The majority-class floor; with several run folders of one task they agree, take the first."""
    for r in rows:
        if r.is_baseline and r.result.accuracy is not None:
            return r.result.accuracy
    return None


def time_items(rows: list[Row]) -> list[tuple[str, float]]:
    """Train + eval seconds per row (the cost a user waits for)."""
    return [(r.label, r.result.timing.train_s + r.result.timing.eval_s)
            for r in ok_rows(rows) if r.result.timing is not None]


def memory_items(rows: list[Row]) -> list[tuple[str, float]]:
    return [(r.label, r.result.peak_memory_bytes / 2**20)
            for r in ok_rows(rows) if r.result.peak_memory_bytes is not None]


def memory_kinds(rows: list[Row]) -> list[str]:
    return sorted({r.result.memory_kind for r in rows if r.result.memory_kind})


def curve_series(row: Row) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[tuple[float, float]]]]:
    """(losses, scores) per epoch; series without a single value are left out."""
    ep = row.result.epochs
    losses = {"train loss": [(e.epoch, e.train_loss) for e in ep if e.train_loss is not None],
              "eval loss": [(e.epoch, e.eval_loss) for e in ep if e.eval_loss is not None]}
    scores = {"accuracy": [(e.epoch, e.accuracy) for e in ep if e.accuracy is not None],
              "macro-F1": [(e.epoch, e.macro_f1) for e in ep if e.macro_f1 is not None]}
    return {k: v for k, v in losses.items() if v}, {k: v for k, v in scores.items() if v}


def per_class_f1(row: Row) -> list[tuple[str, float]]:
    """F1 per label, in label order (the classification report's summary keys left out)."""
    pc = row.result.per_class
    names = [n for n in row.result.labels if n in pc] or [n for n in pc if n not in ("accuracy", "macro avg", "weighted avg")]
    return [(n, float(pc[n].get("f1-score", pc[n].get("f1", 0.0)))) for n in names]


@dataclass
class TaskSummary:
    task: str
    n_train: list[int]
    n_eval: list[int]
    labels: list[str]
    backbones: list[str]
    seeds: list[int]

    def describe(self) -> str:
        """One line: data sizes (when recorded), labels, backbones, seeds."""
        parts = []
        if self.n_train or self.n_eval:
            parts.append(f"{'/'.join(map(str, self.n_train)) or '-'} train / {'/'.join(map(str, self.n_eval)) or '-'} eval examples")
        parts += [f"labels: {', '.join(self.labels) or '-'}", f"backbone: {', '.join(self.backbones) or '-'}",
                  f"seed: {', '.join(map(str, self.seeds))}"]
        return "; ".join(parts)


def _distinct(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def task_summary(task: str, rows: list[Row]) -> TaskSummary:
    res = [r.result for r in rows]
    longest = max((r.labels for r in res), key=len, default=[])
    return TaskSummary(
        task=task,
        n_train=_distinct([r.n_train for r in res if r.n_train]),
        n_eval=_distinct([r.n_eval for r in res if r.n_eval]),
        labels=list(longest),
        backbones=_distinct([r.backbone for r in res if r.backbone and r.backbone != "-"]),
        seeds=_distinct([r.seed for r in res]),
    )


def environment_table(rows: list[Row]) -> list[tuple[str, str]]:
    """Every environment key with its value, or its distinct values when rows disagree."""
    envs = [r.result.environment for r in rows if r.result.environment]
    keys = _distinct([k for e in envs for k in e])
    keys = [k for k in keys if k not in HARDWARE_KEYS] + [k for k in HARDWARE_KEYS if k in keys]
    out = []
    for k in keys:
        vals = _distinct([e.get(k) for e in envs if k in e])
        out.append((k, "; ".join("-" if v is None else str(v) for v in vals)))
    seeds = _distinct([r.result.seed for r in rows])
    out.append(("seed", ", ".join(map(str, seeds))))
    prec = precision_text(rows)
    if prec:
        out.append(("precision", prec))
    return out


def precision_text(rows: list[Row]) -> str:
    """What the rows computed in and why ("bf16 (probe ...)"); when rows differ, each value
    names its rows. Empty when no row recorded it (results written before it was recorded)."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r.result.precision and not r.is_baseline:
            groups.setdefault(f"{r.result.precision} ({r.result.precision_reason or 'no reason recorded'})", []).append(r.label)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{value}: {', '.join(labels)}" for value, labels in groups.items())


def rows_of(run: RunDir, rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.run is run]


def missing_classes(result: RunResult) -> str:
    """"never predicts X, Y" for a row some class was never predicted by (from its confusion
    matrix); empty when every class was, and for the baseline, which never predicts but one."""
    if result.status != "ok" or result.method == BASELINE_METHOD:
        return ""
    missing = never_predicted(result.confusion_matrix, result.labels)
    return f"never predicts {', '.join(missing)}" if missing else ""


def health_notes(rows: list[Row]) -> list[str]:
    """One line per row that needs a reader's attention: failures, health flags, classes never predicted."""
    notes = []
    for r in rows:
        if r.result.status != "ok":
            notes.append(f"{r.label}: failed ({r.result.error or 'no error recorded'})")
        elif not r.is_baseline and (parts := r.result.flags + [m for m in [missing_classes(r.result)] if m]):
            notes.append(f"{r.label}: {', '.join(parts)}")
    return notes
