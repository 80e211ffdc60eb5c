"""How far a row's probabilities can be trusted: NLL, Brier score, expected calibration error.

Accuracy says how often the top answer is right; these say whether the *probabilities* mean
what they claim (a row that says 90% should be right 9 times in 10). Pure numpy functions of a
row's per-example probabilities (predictions.jsonl) and gold labels, so every number can be
recomputed by hand; :func:`calibration_of` turns a row's :class:`Predictions` into the figures
the report shows.

Conventions (the common ones, so numbers compare with papers):
- NLL: mean of ``-log p(gold)``; a probability of exactly 0 is clipped to float64's machine
  epsilon (``-log`` = 36.04) instead of infinity, so a one-hot row (the majority-class baseline)
  gets a large finite number rather than ``inf``.
- Brier: mean over examples of ``sum_k (p_k - [k == gold])^2`` (Brier 1950, multi-class; 0 best,
  2 worst), not the one-vs-rest mean some libraries use.
- ECE: confidence = probability of the predicted (top) label; examples binned by it into 15
  equal-width bins over [0, 1] (Guo et al. 2017); ECE = sum over bins of
  ``|bin| / n * |accuracy(bin) - mean confidence(bin)|``. The adaptive variant (Nixon et al. 2019)
  uses 15 equal-mass bins instead (sorted by confidence, split into near-equal counts), which
  does not leave most bins empty when confidences crowd near 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftlab.results import Predictions

#: bins of the expected calibration error (Guo et al. 2017 use 15)
N_BINS = 15
_EPS = float(np.finfo(np.float64).eps)


def _checked(probs: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    g = np.asarray(gold, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(g) or len(g) == 0:
        raise ValueError(f"need (n, labels) probabilities and n gold ids, got {p.shape} and {g.shape}")
    return p, g


def nll(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean negative log-likelihood of the gold label (natural log; 0 is clipped to machine epsilon)."""
    p, g = _checked(probs, gold)
    return float(-np.log(np.clip(p[np.arange(len(g)), g], _EPS, 1.0)).mean())


def brier(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean squared distance between the probability vector and the one-hot gold label."""
    p, g = _checked(probs, gold)
    onehot = np.eye(p.shape[1])[g]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


@dataclass(frozen=True)
class Bin:
    """One bin of a reliability diagram: the confidence range, how many examples fell in it,
    their mean confidence and how many of them were right."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def _confidence(probs: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top probability, 1.0 where the top label is the gold one) per example."""
    p, g = _checked(probs, gold)
    top = p.argmax(axis=1)
    return p[np.arange(len(g)), top], (top == g).astype(np.float64)


def _bins_of(conf: np.ndarray, correct: np.ndarray, groups: list[np.ndarray], edges: list[tuple[float, float]]) -> list[Bin]:
    return [Bin(lo, hi, len(idx), float(conf[idx].mean()) if len(idx) else 0.0,
                float(correct[idx].mean()) if len(idx) else 0.0) for idx, (lo, hi) in zip(groups, edges)]


def reliability_bins(probs: np.ndarray, gold: np.ndarray, n_bins: int = N_BINS) -> list[Bin]:
    """``n_bins`` equal-width confidence bins over [0, 1]; a confidence on an edge goes to the bin
    below it (``(lo, hi]``), and 0 to the first bin. Empty bins are kept (count 0)."""
    conf, correct = _confidence(probs, gold)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    groups = [np.flatnonzero(which == b) for b in range(n_bins)]
    return _bins_of(conf, correct, groups, [(float(edges[b]), float(edges[b + 1])) for b in range(n_bins)])


def equal_mass_bins(probs: np.ndarray, gold: np.ndarray, n_bins: int = N_BINS) -> list[Bin]:
    """Examples sorted by confidence and split into ``n_bins`` near-equal groups (fewer when there
    are fewer examples); each bin's range is its lowest and highest confidence."""
    conf, correct = _confidence(probs, gold)
    order = np.argsort(conf, kind="stable")
    groups = [g for g in np.array_split(order, min(n_bins, len(order))) if len(g)]
    return _bins_of(conf, correct, groups, [(float(conf[g].min()), float(conf[g].max())) for g in groups])


def _ece(bins: list[Bin]) -> float:
    n = sum(b.count for b in bins)
    return float(sum(b.count / n * abs(b.accuracy - b.confidence) for b in bins if b.count))


def ece(probs: np.ndarray, gold: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error over equal-width confidence bins."""
    return _ece(reliability_bins(probs, gold, n_bins))


def adaptive_ece(probs: np.ndarray, gold: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error over equal-mass confidence bins."""
    return _ece(equal_mass_bins(probs, gold, n_bins))


@dataclass(frozen=True)
class Calibration:
    """A row's calibration figures; ``before``: the same figures of the probabilities before
    contextual calibration (in-context rows with ``calibrate: true`` that stored them)."""

    nll: float
    brier: float
    ece: float
    adaptive_ece: float
    bins: list[Bin]
    n: int
    before: Calibration | None = None


def calibration_from(probs: np.ndarray, gold: np.ndarray) -> Calibration | None:
    """Every figure, or None when any example lacks a probability (NaN: a reasoning row's vote
    that named no label): a figure over the rest would describe another eval set."""
    p, g = _checked(probs, gold)
    if not np.isfinite(p).all():
        return None
    return Calibration(nll(p, g), brier(p, g), ece(p, g), adaptive_ece(p, g), reliability_bins(p, g), len(g))


def calibration_of(preds: Predictions | None) -> Calibration | None:
    """A row's figures from its predictions.jsonl, pooled over its passes (demonstration seeds);
    None without predictions or probabilities (the report then says "-")."""
    if preds is None or len(preds.gold) == 0 or preds.probs.shape[1] == 0:
        return None
    cal = calibration_from(preds.probs, preds.gold)
    if cal is None or preds.raw_probs is None:
        return cal
    before = calibration_from(preds.raw_probs, preds.gold)
    return Calibration(cal.nll, cal.brier, cal.ece, cal.adaptive_ece, cal.bins, cal.n, before)
