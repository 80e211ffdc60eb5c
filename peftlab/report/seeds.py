"""Several seeds per method: mean ± standard deviation, and which differences are within the spread.

A single-seed difference of a point is noise as often as not. With ``seeds: [0, 1, 2]`` every
method runs once per seed; these pure functions fold the per-seed results into one row per
method. A method whose mean accuracy is closer to the best mean than the two spreads together
(``|mean_a - mean_b| < std_a + std_b``: the ±1 std intervals overlap) is marked *not significant*
against the best: the seeds cannot tell them apart.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from peftlab.results.metrics import SELECT_METRICS, selection_value
from peftlab.report.paired import Paired, interval_text, wilson_interval
from peftlab.report.calibration import Calibration, calibration_of
from peftlab.report.drift import drift_cka, lm_loss_delta
from peftlab.results import BASELINE_METHOD, Predictions, RunResult

BEST, NOT_SIGNIFICANT, BELOW = "best", "n.s. (within spread of best)", "below best"


def seed_dir(out: Path, seed: int) -> Path:
    """Where a multi-seed run keeps seed ``seed``'s complete single-seed run (peftlab.runners.seeds)."""
    return out / f"seed-{seed}"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


@dataclass
class SeedSummary:
    """One method over its seeds; only runs that ended ``ok`` count toward the statistics."""

    name: str
    kind: str
    seeds: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    #: evaluation examples per run (the same split for every seed)
    n_eval: int = 0
    #: forgetting per ok seed (peftlab.report.drift); None where that seed did not measure it
    cka: list[float | None] = field(default_factory=list)
    lm_delta: list[float | None] = field(default_factory=list)

    @property
    def acc(self) -> tuple[float, float] | None:
        return mean_std(self.accuracy) if self.accuracy else None

    @property
    def f1(self) -> tuple[float, float] | None:
        return mean_std(self.macro_f1) if self.macro_f1 else None

    @property
    def cka_stat(self) -> tuple[float, float] | None:
        """(mean, std) of the CKA to base over the seeds; None unless every ok seed measured it
        (a mean over some seeds would pass for all of them)."""
        return _complete_mean_std(self.cka)

    @property
    def lm_delta_stat(self) -> tuple[float, float] | None:
        """(mean, std) of the LM loss change over the seeds; None unless every ok seed measured it."""
        return _complete_mean_std(self.lm_delta)

    def stat(self, metric: str) -> tuple[float, float] | None:
        """(mean, std) of a selection metric over the seeds (its per-seed values are the field
        of that name)."""
        values = selection_value(self, metric)
        return mean_std(values) if values else None


def _complete_mean_std(values: list[float | None]) -> tuple[float, float] | None:
    if not values or any(v is None for v in values):
        return None
    return mean_std([v for v in values if v is not None])


def distinct_seeds(results: list[RunResult]) -> list[int]:
    return sorted({r.seed for r in results})


def summarise(results: list[RunResult]) -> list[SeedSummary]:
    """One summary per row name, in first-seen order."""
    out: dict[str, SeedSummary] = {}
    for r in results:
        s = out.setdefault(r.name, SeedSummary(name=r.name, kind=r.method))
        if r.status == "ok" and r.accuracy is not None:
            s.seeds.append(r.seed)
            s.n_eval = r.n_eval
            s.accuracy.append(r.accuracy)
            s.macro_f1.append(r.macro_f1 if r.macro_f1 is not None else float("nan"))
            s.cka.append(drift_cka(r))
            s.lm_delta.append(lm_loss_delta(r))
        else:
            s.failed.append(r.seed)
    return list(out.values())


def within_spread(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Means closer than the two standard deviations together: not a significant difference."""
    return abs(a[0] - b[0]) < a[1] + b[1]


def select_metric(results: list[RunResult]) -> str:
    """The metric "best" is judged by (``train.select_metric``): the one the results recorded, or
    accuracy when they disagree (a report over runs with different settings) or recorded none."""
    found = {r.select_metric for r in results}
    return found.pop() if len(found) == 1 else "accuracy"


def versus_best(summaries: list[SeedSummary], metric: str = "accuracy") -> dict[str, str]:
    """Each method against the best mean ``metric`` (peftlab.results.metrics.selection_value): best /
    n.s. (within spread) / below best."""
    stats = {s.name: v for s in summaries if (v := s.stat(metric)) is not None and not math.isnan(v[0])}
    if not stats:
        return {}
    kinds = {s.name: s.kind for s in summaries}
    # the majority-class reference is judged against the best, never the best itself
    candidates = [n for n in stats if kinds[n] != BASELINE_METHOD] or list(stats)
    best = max(candidates, key=lambda n: stats[n][0])
    return {n: BEST if n == best else NOT_SIGNIFICANT if within_spread(v, stats[best]) else BELOW
            for n, v in stats.items()}


def pm(ms: tuple[float, float] | None) -> str:
    return "" if ms is None else f"{ms[0]:.4f} ± {ms[1]:.4f}"


def _pm3(ms: tuple[float, float] | None, spec: str) -> str:
    """A forgetting cell: mean ± std, "-" where some seed did not measure it."""
    return "-" if ms is None else f"{ms[0]:{spec}} ± {ms[1]:.3f}"


SUMMARY_COLUMNS = ["method", "kind", "seeds", "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std",
                   "vs_best", "failed_seeds", "accuracy_ci_low", "accuracy_ci_high", "vs_best_paired",
                   "vs_best_paired_diff", "vs_best_paired_low", "vs_best_paired_high",
                   # calibration of every seed's probabilities pooled (peftlab.report.calibration)
                   "nll", "brier", "ece", "ece_adaptive",
                   # forgetting (peftlab.report.drift), mean ± std over the seeds that all measured it
                   "drift_cka_mean", "drift_cka_std", "lm_loss_delta_mean", "lm_loss_delta_std"]


def mean_interval(s: SeedSummary) -> tuple[float, float] | None:
    """The Wilson interval of the mean accuracy over the ``n_eval`` examples: the uncertainty from
    which examples were drawn, which the spread over seeds does not show."""
    acc = s.acc
    return None if acc is None or s.n_eval <= 0 else wilson_interval(acc[0] * s.n_eval, s.n_eval)


def _paired_cells(v: Paired | None) -> dict[str, str]:
    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.4f}"

    if v is None:
        return {"vs_best_paired": "-", "vs_best_paired_diff": "", "vs_best_paired_low": "", "vs_best_paired_high": ""}
    return {"vs_best_paired": v.verdict, "vs_best_paired_diff": f(v.diff), "vs_best_paired_low": f(v.low),
            "vs_best_paired_high": f(v.high)}


def pooled_calibration(results: list[RunResult], preds: list[Predictions | None]) -> dict[str, Calibration | None]:
    """Per method, the calibration of all its seeds' predictions together; None when a seed's
    run failed or has no predictions (a figure over some seeds would hide the others)."""
    groups: dict[str, list[Predictions | None]] = {}
    for r, p in zip(results, preds):
        groups.setdefault(r.name, []).append(p if r.status == "ok" else None)
    return {name: None if any(p is None for p in ps) else calibration_of(Predictions.pooled([p for p in ps if p is not None]))
            for name, ps in groups.items()}


def _calibration_cells(c: Calibration | None) -> dict[str, str]:
    if c is None:
        return {"nll": "", "brier": "", "ece": "", "ece_adaptive": ""}
    return {"nll": f"{c.nll:.4f}", "brier": f"{c.brier:.4f}", "ece": f"{c.ece:.4f}", "ece_adaptive": f"{c.adaptive_ece:.4f}"}


def _drift_cells(s: SeedSummary) -> dict[str, str]:
    cka, lm = s.cka_stat, s.lm_delta_stat
    return {"drift_cka_mean": "" if cka is None else f"{cka[0]:.4f}", "drift_cka_std": "" if cka is None else f"{cka[1]:.4f}",
            "lm_loss_delta_mean": "" if lm is None else f"{lm[0]:+.4f}",
            "lm_loss_delta_std": "" if lm is None else f"{lm[1]:.4f}"}


def summary_rows(results: list[RunResult], paired: dict[str, Paired] | None = None,
                 preds: list[Predictions | None] | None = None) -> list[dict[str, str]]:
    """The per-method rows of comparison.csv for a multi-seed run; ``paired``: each method's
    pooled paired verdict against the best (peftlab.report.paired.pooled_verdicts), "-" if absent;
    ``preds``: each run's predictions, for the pooled calibration columns (blank without)."""
    sums = summarise(results)
    cal = pooled_calibration(results, preds) if preds is not None else {}
    verdict = versus_best(sums, select_metric(results))
    rows = []
    for s in sums:
        acc, f1, ci = s.acc, s.f1, mean_interval(s)
        rows.append({**_paired_cells((paired or {}).get(s.name)),
            "accuracy_ci_low": "" if ci is None else f"{ci[0]:.4f}", "accuracy_ci_high": "" if ci is None else f"{ci[1]:.4f}",
            "method": s.name, "kind": s.kind, "seeds": " ".join(map(str, s.seeds)),
            "accuracy_mean": "" if acc is None else f"{acc[0]:.4f}", "accuracy_std": "" if acc is None else f"{acc[1]:.4f}",
            "macro_f1_mean": "" if f1 is None else f"{f1[0]:.4f}", "macro_f1_std": "" if f1 is None else f"{f1[1]:.4f}",
            "vs_best": verdict.get(s.name, ""), "failed_seeds": " ".join(map(str, s.failed)),
            **_calibration_cells(cal.get(s.name)), **_drift_cells(s),
        })
    return rows


def summary_markdown(results: list[RunResult], level: int = 2, paired: dict[str, Paired] | None = None) -> list[str]:
    """A Markdown table of mean ± std per method, with the spread verdict against the best and,
    beside it, the paired one over every example of every seed (``paired``; "-" where absent)."""
    sums = summarise(results)
    metric = select_metric(results)
    verdict = versus_best(sums, metric)
    lines = [f"{'#' * level} Mean ± std over seeds {', '.join(map(str, distinct_seeds(results)))}", "",
             f"| method | seeds | accuracy | accuracy 95% CI | macro-F1 | vs best ({SELECT_METRICS[metric]}) "
             "| vs best (paired, accuracy) | CKA to base | LM loss Δ |", "|---|---|---|---|---|---|---|---|---|"]
    for s in sums:
        failed = f" ({len(s.failed)} failed)" if s.failed else ""
        v = (paired or {}).get(s.name)
        lines.append(f"| {s.name} | {len(s.seeds)}{failed} | {pm(s.acc)} | {interval_text(mean_interval(s))} | {pm(s.f1)} "
                     f"| {verdict.get(s.name, '')} | {'-' if v is None else v.text()} "
                     f"| {_pm3(s.cka_stat, '.3f')} | {_pm3(s.lm_delta_stat, '+.3f')} |")
    lines += ["", note(metric), "", paired_note(), ""]
    return lines


def paired_note() -> str:
    return ("accuracy 95% CI: Wilson interval of the mean accuracy over the evaluation examples. vs best (paired): "
            "every example of every seed, each example scored by the share of seeds that got it right, against the "
            "method with the best mean accuracy: better / worse when the 95% paired bootstrap interval of the "
            "difference (shown) excludes 0, else not distinguishable; - = some seed has no per-example predictions.")


def note(metric: str = "accuracy") -> str:
    return ("std is the sample standard deviation over seeds. n.s. = the difference to the best mean "
            f"{SELECT_METRICS[metric]} (train.select_metric) is smaller than the two standard deviations together "
            "(the ±1 std ranges overlap): these seeds cannot tell the two apart.")


def summary_csv(results: list[RunResult], paired: dict[str, Paired] | None = None,
                preds: list[Predictions | None] | None = None) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(summary_rows(results, paired, preds))
    return buf.getvalue()
