"""What a report says about a group of rows, computed once for both renderers.

Pure functions from collected rows to plain numbers and strings; any RunResult works, however
little it recorded (an in-context row without epochs or timing simply contributes less).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftlab.results.metrics import never_predicted
from peftlab.report.collect import Row, RunDir
from peftlab.report.plots import Point, pareto_frontier
from peftlab.infra.registry import Registry
from peftlab.report.calibration import N_BINS, Calibration
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


@dataclass(frozen=True)
class Tradeoff:
    """One cost accuracy is traded against in a Pareto plot: what it is called and where it comes from."""

    key: str
    #: the cost in words ("trainable parameters"), for titles, the x axis and report.md
    name: str
    #: its unit on the x axis ("" for a count)
    unit: str
    #: the row's cost, None when it was not recorded (the row is then named under the plot, not drawn)
    cost: Callable[[RunResult], float | None]
    #: a point's cost in its tooltip
    tip: Callable[[float], str]

    @property
    def axis(self) -> str:
        return f"{self.name}, {self.unit}" if self.unit else self.name


def _mb(b: int | None) -> float | None:
    return None if b is None else b / 2**20


#: ``peftlab report --pareto KEY`` picks the one report.md names; report.html draws all four
TRADEOFFS: Registry[Tradeoff] = Registry("--pareto value")
for _t in (Tradeoff("params", "trainable parameters", "", lambda r: None if r.params is None else r.params.trainable,
                    lambda v: f"{v:,.0f} trainable"),
           Tradeoff("memory", "peak memory", "MB", lambda r: _mb(r.peak_memory_bytes), lambda v: f"peak {v:,.0f} MB"),
           Tradeoff("time", "training time", "s", lambda r: None if r.timing is None else r.timing.train_s,
                    lambda v: f"trained {v:,.1f} s"),
           Tradeoff("size", "adapter size", "MB", lambda r: _mb(r.adapter_bytes), lambda v: f"adapter {v:,.3f} MB")):
    TRADEOFFS.add(_t.key, _t)
#: the order report.html draws them in (the headline first, then this order)
TRADEOFF_ORDER = ("params", "memory", "time", "size")
DEFAULT_TRADEOFF = "params"


def pareto_points(rows: list[Row], axis: str = DEFAULT_TRADEOFF) -> list[tuple[Row, Point]]:
    """Finished, non-baseline rows that have both an accuracy and the ``axis`` cost."""
    out = []
    colours = row_colours(rows)
    cost = TRADEOFFS.get(axis).cost
    for r in ok_rows(rows):
        res = r.result
        if r.is_baseline or res.accuracy is None or (c := cost(res)) is None:
            continue
        out.append((r, Point(r.label, c, res.accuracy, colours[r.label])))
    return out


def unplotted_labels(rows: list[Row], axis: str = DEFAULT_TRADEOFF) -> list[str]:
    """Finished rows missing from the ``axis`` Pareto plot (no accuracy or no such cost), to name them."""
    plotted = {r.label for r, _ in pareto_points(rows, axis)}
    return [r.label for r in ok_rows(rows) if not r.is_baseline and r.label not in plotted]


def frontier_labels(rows: list[Row], axis: str = DEFAULT_TRADEOFF) -> list[str]:
    pts = [p for _, p in pareto_points(rows, axis)]
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

    dropped: str = ""

    def describe(self) -> str:
        """One line: data sizes (when recorded), labels, backbones, seeds, dropped eval duplicates."""
        parts = []
        if self.n_train or self.n_eval:
            parts.append(f"{'/'.join(map(str, self.n_train)) or '-'} train / {'/'.join(map(str, self.n_eval)) or '-'} eval examples")
        parts += [f"labels: {', '.join(self.labels) or '-'}", f"backbone: {', '.join(self.backbones) or '-'}",
                  f"seed: {', '.join(map(str, self.seeds))}"]
        return "; ".join(parts + ([self.dropped] if self.dropped else []))


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
        dropped=dropped_note(res),
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


#: flags that describe the task's data, not a row: said once per task, never per row
TASK_FLAGS = ("train_eval_overlap",)


def row_flags(result: RunResult) -> list[str]:
    """A row's own health flags (the task's data flags left out) and the classes it never predicts."""
    return [f for f in result.flags if f not in TASK_FLAGS] + [m for m in [missing_classes(result)] if m]


def data_notes(results: list[RunResult]) -> list[str]:
    """What the task's data itself holds, said once for all its rows: eval inputs that also occur in
    training (every row is evaluated on them), and duplicates a builtin task's loader dropped."""
    notes = []
    overlap = max((int(r.details.get("train_eval_overlap") or 0) for r in results), default=0)
    if overlap:
        n_eval = max((r.n_eval for r in results), default=0)
        notes.append(f"train_eval_overlap: {overlap} of {n_eval} evaluation inputs also occur in the training "
                     "split (the same for every row); their accuracy is inflated")
    return notes


def dropped_note(results: list[RunResult]) -> str:
    """The builtin loader's dropped eval duplicates, in words (empty when none were dropped)."""
    n = max((int(r.details.get("eval_duplicates_dropped") or 0) for r in results), default=0)
    if not n:
        return ""
    return (f"{n} evaluation example{'s' if n > 1 else ''} whose text also occurs in the training split "
            f"{'were' if n > 1 else 'was'} dropped from the builtin eval split")


def health_notes(rows: list[Row]) -> list[str]:
    """The task's data notes once, then one line per row that needs a reader's attention:
    failures, health flags, classes never predicted."""
    notes = data_notes([r.result for r in rows])
    for r in rows:
        if r.result.status != "ok":
            notes.append(f"{r.label}: failed ({r.result.error or 'no error recorded'})")
        elif not r.is_baseline and (parts := row_flags(r.result)):
            notes.append(f"{r.label}: {', '.join(parts)}")
    return notes


def effective_params(row: Row) -> dict[str, Any]:
    """The row's hyperparameters as they were used: ``epochs`` from ``train.epochs`` when the row
    set none (left out for a row that trains nothing), the backbone the row actually ran on, the
    target modules its saved adapter names, no ``name: null`` (the method's own name was used),
    and "default" for any other unset value (the method chose it)."""
    params = dict(row.result.method_params)
    if params.get("target_modules") is None and (saved := _adapter_targets(row)):
        params["target_modules"] = saved
    if params.get("name") is None:
        params.pop("name", None)
    if "backbone" in params and params["backbone"] is None:
        params["backbone"] = row.result.backbone
    if "epochs" in params and params["epochs"] is None:
        train = row.run.config.get("train") if isinstance(row.run.config.get("train"), dict) else {}
        ran = max((e.epoch for e in row.result.epochs), default=None)
        epochs = train.get("epochs", ran) if ran is not None else None
        if epochs is None:
            params.pop("epochs")
        else:
            params["epochs"] = epochs
    return {k: "default" if v is None else v for k, v in params.items()}


def _adapter_targets(row: Row) -> list[str] | None:
    """The target modules peft recorded in the row's saved adapter (adapter_config.json), if any."""
    if not row.result.adapter_path:
        return None
    try:
        data = json.loads((row.path.parent / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    targets = data.get("target_modules") if isinstance(data, dict) else None
    return sorted(map(str, targets)) if isinstance(targets, (list, tuple)) and targets else None


def _figures(c: Calibration) -> str:
    return (f"NLL {c.nll:.3f}, Brier {c.brier:.3f}, ECE {c.ece:.3f} ({N_BINS} equal-width bins), "
            f"adaptive ECE {c.adaptive_ece:.3f} ({N_BINS} equal-mass bins)")


def calibration_text(c: Calibration) -> str:
    """The row's calibration figures in one sentence, with the figures before contextual
    calibration when the row stored them."""
    text = f"calibration over {c.n} predictions: {_figures(c)}"
    if c.before is not None:
        text += f"; before contextual calibration: {_figures(c.before)}"
    return text
