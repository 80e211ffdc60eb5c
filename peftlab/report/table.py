"""The comparison table both renderers draw: columns, better directions, best value per column.

Kept free of any output format so the Markdown and the HTML report cannot disagree about which
value is best. The majority-class baseline is a reference floor, never a candidate for "best"
(its 0 trainable parameters would otherwise win that column every time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from peftlab.report.collect import Row
from peftlab.report.drift import drift_cka, lm_loss_delta
from peftlab.report.facts import row_flags
from peftlab.report.paired import accuracy_interval, interval_text, note, paired_verdicts
from peftlab.results import BASELINE_METHOD, RunResult

Better = Literal["max", "min"]
ARROW = {"max": "\u2191", "min": "\u2193"}  # up / down arrows: which direction is better


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    #: the number compared for "best" (None: no value, or a text column)
    number: Callable[[RunResult], float | None]
    fmt: Callable[[float], str]
    better: Better | None = None
    text: Callable[[Row], str] | None = None
    note: str = ""
    #: a text column whose cells depend on every row (the paired verdict against the best row)
    texts: Callable[[list[Row]], list[str]] | None = None
    #: the number from the whole row (its predictions) instead of ``number`` (calibration columns)
    row_number: Callable[[Row], float | None] | None = None
    #: text after a number (a calibrated in-context row's figure before calibration)
    suffix: Callable[[Row], str] | None = None
    #: what a cell without a value says ("-": the row recorded nothing this could come from)
    missing: str = ""

    def value(self, row: Row) -> float | None:
        return self.row_number(row) if self.row_number is not None else self.number(row.result)

    @property
    def title(self) -> str:
        return f"{self.header} {ARROW[self.better]}" if self.better else self.header


@dataclass(frozen=True)
class Cell:
    text: str
    best: bool = False


def _none(_: RunResult) -> None:
    return None


def _mb(b: int | None) -> float | None:
    return None if b is None else b / 2**20


def params_check(r: RunResult) -> str:
    """Counted vs closed-form parameter numbers, said in words a reader can check."""
    p = r.params
    if p is None or r.method == BASELINE_METHOD:
        return ""
    if p.agree is None:
        return "no formula"
    if p.agree:
        return "ok"
    return f"MISMATCH: counted {p.trainable:,}/{p.total:,}, derived {p.derived_trainable}/{p.derived_total}"


def flags_text(r: RunResult) -> str:
    if r.status != "ok":
        return f"failed: {r.error or 'no error recorded'}"
    return " ".join(row_flags(r))


def paired_texts(rows: list[Row]) -> list[str]:
    """Each row against the best row of its task and seed, on the same examples (peftlab.report.paired)."""
    return [v.text() for v in paired_verdicts([r.result for r in rows], [r.predictions for r in rows])]


def _timing(attr: str) -> Callable[[RunResult], float | None]:
    return lambda r: None if r.timing is None else getattr(r.timing, attr)


def _calibration(attr: str) -> Callable[[Row], float | None]:
    return lambda row: None if row.calibration is None else getattr(row.calibration, attr)


def _before(attr: str) -> Callable[[Row], str]:
    """`` (before 0.123)``: an in-context row's figure before contextual calibration, when stored."""
    def text(row: Row) -> str:
        before = None if row.calibration is None else row.calibration.before
        return "" if before is None else f" (before {getattr(before, attr):.3f})"
    return text


CALIBRATION_NOTE = ("with Brier and ECE, how far the row's probabilities can be trusted: NLL = mean -log p(gold label); Brier = mean squared distance of the probabilities from the "
                    "one-hot gold label (0 best, 2 worst); ECE = expected calibration error, |accuracy - confidence| "
                    "over 15 equal-width confidence bins weighted by their size (the equal-mass variant is in "
                    "comparison.csv and under each method); all from predictions.jsonl. \"-\" = no probabilities "
                    "recorded; (before x) = an in-context row's figure before contextual calibration")


COLUMNS: list[Column] = [
    Column("method", "method", _none, str, text=lambda row: row.label),
    Column("kind", "kind", _none, str, text=lambda row: row.result.method),
    Column("accuracy", "accuracy", lambda r: r.accuracy, lambda v: f"{v:.4f}", "max"),
    Column("accuracy_ci", "accuracy 95% CI", _none, str, text=lambda row: interval_text(accuracy_interval(row.result)),
           note=note()),
    Column("vs_best", "vs best (paired)", _none, str, texts=paired_texts),
    Column("macro_f1", "macro-F1", lambda r: r.macro_f1, lambda v: f"{v:.4f}", "max"),
    Column("nll", "NLL", _none, lambda v: f"{v:.3f}", "min", row_number=_calibration("nll"), suffix=_before("nll"),
           missing="-", note=CALIBRATION_NOTE),
    Column("brier", "Brier", _none, lambda v: f"{v:.3f}", "min", row_number=_calibration("brier"),
           suffix=_before("brier"), missing="-"),
    Column("ece", "ECE", _none, lambda v: f"{v:.3f}", "min", row_number=_calibration("ece"), suffix=_before("ece"),
           missing="-"),
    Column("drift_cka", "CKA to base", drift_cka, lambda v: f"{v:.3f}", missing="-",
           note="linear CKA of the adapted model's mean-pooled last hidden states to the base model's on up to "
                "512 eval inputs: how much the method changed the backbone (1 = unchanged, lower = moved "
                "further; neither direction is better in itself). - = not measured"),
    Column("lm_loss_delta", "LM loss \u0394", lm_loss_delta, lambda v: f"{v:+.3f}", missing="-",
           note="a causal-LM row's mean token NLL on peftlab's shipped public-domain reference text after "
                "adapting minus before (0 = unchanged, > 0 = the LM got worse at ordinary text). - = not measured"),
    Column("trainable", "trainable", lambda r: None if r.params is None else r.params.trainable,
           lambda v: f"{int(v):,}", "min"),
    Column("pct_trainable", "% trainable", lambda r: None if r.params is None else r.params.percent_trainable,
           lambda v: f"{v:.3f}", "min"),
    Column("params_check", "counted vs derived", _none, str, text=lambda row: params_check(row.result),
           note="trainable and total parameters counted on the model equal the closed-form formula (ok), "
                "differ (MISMATCH), or no formula exists for this architecture or method (the generic peft row)"),
    Column("train_s", "train s", _timing("train_s"), lambda v: f"{v:.1f}", "min"),
    Column("eval_s", "eval s", _timing("eval_s"), lambda v: f"{v:.2f}", "min"),
    Column("peak_mb", "peak MB", lambda r: _mb(r.peak_memory_bytes), lambda v: f"{v:.0f}", "min",
           note="process RSS on CPU, max allocated on CUDA"),
    Column("train_ex_s", "train ex/s", _timing("train_examples_per_s"), lambda v: f"{v:.1f}", "max"),
    Column("eval_ex_s", "eval ex/s", _timing("eval_examples_per_s"), lambda v: f"{v:.1f}", "max"),
    Column("adapter_mb", "adapter MB", lambda r: _mb(r.adapter_bytes), lambda v: f"{v:.3f}", "min"),
    Column("flags", "health", _none, str, text=lambda row: flags_text(row.result),
           note="collapsed = every eval prediction is one class; never predicts X = no eval example was "
                "predicted as class X; nan_loss = training stopped on a "
                "non-finite loss; params_unchanged = trainable weights never moved; "
                "params_mismatch = counted and derived parameter numbers differ"),
]


def _candidate(row: Row) -> bool:
    return row.result.status == "ok" and not row.is_baseline


def best_values(rows: list[Row], columns: list[Column] = COLUMNS) -> dict[str, float]:
    """Per column with a better direction, the best value among ok, non-baseline rows.

    A column gets no best when fewer than two rows have a value, or when all shown values are
    equal: marking every row says nothing.
    """
    best: dict[str, float] = {}
    for col in columns:
        if col.better is None:
            continue
        values = [v for row in rows if _candidate(row) and (v := col.value(row)) is not None]
        if len(values) >= 2 and len({col.fmt(v) for v in values}) > 1:
            best[col.key] = max(values) if col.better == "max" else min(values)
    return best


def table(rows: list[Row], columns: list[Column] = COLUMNS) -> list[list[Cell]]:
    """Formatted cells, one list per row, with the best value per column marked."""
    best = best_values(rows, columns)
    whole = {col.key: col.texts(rows) for col in columns if col.texts is not None}
    out = []
    for i, row in enumerate(rows):
        cells = []
        for col in columns:
            if col.key in whole:
                cells.append(Cell(whole[col.key][i]))
                continue
            if col.text is not None:
                cells.append(Cell(col.text(row)))
                continue
            v = col.value(row)
            if v is None:
                cells.append(Cell(col.missing if row.result.status == "ok" else ""))
                continue
            is_best = col.key in best and _candidate(row) and col.fmt(v) == col.fmt(best[col.key])
            cells.append(Cell(col.fmt(v) + (col.suffix(row) if col.suffix else ""), is_best))
        out.append(cells)
    return out


def columns_for(rows: list[Row]) -> list[Column]:
    """The columns worth showing for ``rows``: "kind" (the method) only when some row's name
    differs from its method; otherwise every cell would repeat the name beside it."""
    repeats = all(r.result.name == r.result.method for r in rows)
    return [c for c in COLUMNS if not (c.key == "kind" and repeats)]


def legend(columns: list[Column] = COLUMNS) -> list[str]:
    """What the arrows, the best mark and the less obvious columns mean."""
    lines = ["\u2191 higher is better, \u2193 lower is better; the best value of each column "
             "(ok rows, baseline excluded) is marked."]
    lines += [f"{c.header}: {c.note}" for c in columns if c.note]
    return lines
