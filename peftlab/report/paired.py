"""How sure is an accuracy, and is a row really worse than the best one? Pure functions.

A single-seed table of accuracies invites reading 0.81 against 0.79 as a ranking. Two rows scored
on the same evaluation examples can be compared example by example, which is far more sensitive
than comparing two independent accuracies:

- :func:`wilson_interval`: the Wilson score interval of one accuracy over ``n`` examples (unlike
  the normal approximation, it stays inside [0, 1] and is honest near 0 and 1).
- :func:`mcnemar_exact`: McNemar's exact test. Only the examples the two rows disagree on carry
  information; under "no difference" each disagreement goes either way with probability 1/2, so
  the count one row wins is Binomial(b + c, 1/2) (``scipy.stats.binomtest``).
- :func:`paired_bootstrap`: a percentile confidence interval of the accuracy difference,
  resampling examples (both rows' answers on an example stay together), seeded and vectorised.

:func:`versus_best` turns them into the report's verdict for every row against the most accurate
one: better / worse / not distinguishable at 95%, with the interval of the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, norm

from peftlab.results import BASELINE_METHOD, Predictions, RunResult

#: the majority-class row: a reference floor, never the best (as in the comparison table)

LEVEL = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BEST, BETTER, WORSE, SAME = "best", "better", "worse", "not distinguishable"
#: a row with no verdict: no predictions (failed, older peftlab), or not scored on the best row's examples
NO_VERDICT = "-"


def wilson_interval(successes: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` at ``level`` (e.g. 8/10 at 95%:
    [0.490, 0.943]). ``successes`` may be fractional (a mean accuracy times ``n``)."""
    if n <= 0:
        raise ValueError("n must be positive")
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


@dataclass(frozen=True)
class McNemar:
    """``b``: examples only row A got right; ``c``: only row B; ``p``: two-sided p-value."""

    b: int
    c: int
    p: float


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray, mid_p: bool = False) -> McNemar:
    """McNemar's exact test on two rows' 0/1 correctness over the same examples.

    ``mid_p``: the mid-p variant (the exact p less the probability of the observed count), less
    conservative with few disagreements. No disagreement at all: p = 1.
    """
    a, bb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != bb.shape:
        raise ValueError("both rows must be scored on the same examples")
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    if b + c == 0:
        return McNemar(b, c, 1.0)
    p = binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    if mid_p:
        from scipy.stats import binom

        p = p - binom.pmf(b, b + c, 0.5)
    return McNemar(b, c, float(min(1.0, p)))


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """(observed accuracy difference A - B, low, high): the percentile interval at ``level`` over
    ``resamples`` resamplings of the examples. Correctness may be fractional (the share of
    demonstration seeds that got an example right). Seeded: the same inputs give the same interval.

    Resampling n examples with replacement only changes how often each per-example difference
    occurs, so it is drawn as multinomial counts over the few distinct differences (-1, 0, 1 for
    single answers): the same distribution as drawing indices, in O(resamples x distinct values)
    instead of O(resamples x n) time and memory.
    """
    d = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("no examples")
    values, counts = np.unique(d, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)  # (resamples, distinct)
    means = draws @ values / n
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


@dataclass(frozen=True)
class Paired:
    """One row against the best row: the verdict, the difference (row - best) and its interval,
    and McNemar's p where both rows answered once per example (None otherwise)."""

    verdict: str
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    p: float | None = None

    def text(self) -> str:
        if self.verdict in (BEST, NO_VERDICT) or self.diff is None:
            return self.verdict
        p = "" if self.p is None else f", p={self.p:.3g}"
        return f"{self.verdict} ({self.diff:+.4f} [{self.low:+.4f}, {self.high:+.4f}]{p})"


def aligned(a: Predictions, b: Predictions) -> tuple[np.ndarray, np.ndarray] | None:
    """Both rows' per-example correctness on the same examples, or None when they were not scored
    on the same examples (other indices, or other gold labels at the same index)."""
    ia, ga, ca = a.correct_per_example()
    ib, gb, cb = b.correct_per_example()
    if len(ia) == 0 or not (np.array_equal(ia, ib) and np.array_equal(ga, gb)):
        return None
    return ca, cb


def compare(row: Predictions, best: Predictions, level: float = LEVEL, seed: int = BOOTSTRAP_SEED) -> Paired:
    """``row`` against ``best``. The verdict is McNemar's exact test at ``1 - level`` when both
    answered each example once; when either averages several demonstration seeds (fractional
    correctness, no 2x2 table) it is whether the bootstrap interval excludes 0."""
    pair = aligned(row, best)
    if pair is None:
        return Paired(NO_VERDICT)
    ca, cb = pair
    diff, lo, hi = paired_bootstrap(ca, cb, seed=seed, level=level)
    binary = row.seed is None and best.seed is None
    if binary:
        p: float | None = mcnemar_exact(ca, cb).p
        differs = p < 1 - level
    else:
        p, differs = None, lo > 0 or hi < 0
    verdict = SAME if not differs else BETTER if diff > 0 else WORSE
    return Paired(verdict, diff, lo, hi, p)


def against_best(accuracy: Sequence[float | None], predictions: Sequence[Predictions | None],
                candidate: Sequence[bool]) -> list[Paired]:
    """Every row against the most accurate candidate row (ok and not the baseline; the first of a
    tie). The best says "best"; a row without predictions, or every row when the best has none,
    says "-": a verdict needs both rows' answers on the same examples."""
    scored = [i for i, (a, c) in enumerate(zip(accuracy, candidate)) if c and a is not None]
    if not scored:
        return [Paired(NO_VERDICT)] * len(accuracy)
    best = max(scored, key=lambda i: (accuracy[i], -i))
    ref = predictions[best]
    out = []
    for i, preds in enumerate(predictions):
        if i == best:
            out.append(Paired(BEST) if ref is not None else Paired(NO_VERDICT))
        elif ref is None or preds is None or accuracy[i] is None:
            out.append(Paired(NO_VERDICT))
        else:
            out.append(compare(preds, ref))
    return out


def note(level: float = LEVEL) -> str:
    """What the interval and verdict columns mean, for the legends."""
    pct = f"{level:.0%}"
    return (f"accuracy {pct} CI: Wilson score interval over the evaluation examples. vs best (paired): each row "
            f"against the most accurate one on the same examples: better / worse / not distinguishable at {pct} "
            f"by McNemar's exact test (p), with the difference in accuracy (row - best) and its {pct} paired "
            f"bootstrap interval ({RESAMPLES} resamples); rows averaging several demonstration seeds are judged by "
            "whether that interval excludes 0. - = no per-example predictions (failed row, older results) "
            "or other examples than the best row's.")


def accuracy_interval(result: RunResult, level: float = LEVEL) -> tuple[float, float] | None:
    """The Wilson interval of a row's accuracy over its ``n_eval`` examples (a mean over
    demonstration seeds counts as ``accuracy * n_eval`` successes); None without an accuracy."""
    if result.accuracy is None or result.n_eval <= 0:
        return None
    return wilson_interval(result.accuracy * result.n_eval, result.n_eval, level)


def interval_text(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _candidate(r: RunResult) -> bool:
    return r.status == "ok" and r.method != BASELINE_METHOD


def paired_verdicts(results: Sequence[RunResult], preds: Sequence[Predictions | None]) -> list[Paired]:
    """Every run against the best run of its task and seed (runs of other seeds were trained
    differently, so only runs of one seed are compared example by example); a run not ``ok``
    says "-"."""
    out: list[Paired] = [Paired(NO_VERDICT)] * len(results)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault((r.task, r.seed), []).append(i)
    for idx in groups.values():
        ok = [results[i].status == "ok" for i in idx]
        verdicts = against_best([results[i].accuracy if o else None for i, o in zip(idx, ok)],
                                [preds[i] if o else None for i, o in zip(idx, ok)],
                                [_candidate(results[i]) for i in idx])
        for i, v in zip(idx, verdicts):
            out[i] = v
    return out


def pooled_verdicts(results: Sequence[RunResult], preds: Sequence[Predictions | None]) -> dict[str, Paired]:
    """Several seeds: one verdict per method name over all its ok seeds (per example, the share of
    seeds that got it right; its mean is the method's mean accuracy), judged by the bootstrap
    interval. A method with an ok seed lacking predictions says "-"."""
    names: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        names.setdefault(r.name, []).append(i)
    accs: list[float | None] = []
    pooled: list[Predictions | None] = []
    cand: list[bool] = []
    for idx in names.values():
        ok = [i for i in idx if results[i].status == "ok" and results[i].accuracy is not None]
        parts = [preds[i] for i in ok]
        accs.append(float(np.mean([results[i].accuracy for i in ok])) if ok else None)  # type: ignore[misc]
        pooled.append(Predictions.pooled(parts) if ok and all(p is not None for p in parts) else None)  # type: ignore[arg-type]
        cand.append(bool(ok) and results[idx[0]].method != BASELINE_METHOD)
    return dict(zip(names, against_best(accs, pooled, cand)))
