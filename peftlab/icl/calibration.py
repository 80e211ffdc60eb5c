"""From per-verbalizer log-likelihoods to label probabilities: aggregation, normalisation,
temperature and contextual calibration (Zhao et al. 2021). Pure functions on arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Zhao et al.'s content-free inputs; their averaged label distribution is the model's prior.
CONTENT_FREE = ("N/A", "", "[MASK]")


def normalise(loglik: float, n_tokens: int, n_chars: int, how: str) -> float:
    """``sum`` (lm-eval ``acc``), ``char`` (lm-eval ``acc_norm``: per byte of text) or ``token``."""
    if how == "sum":
        return loglik
    if how == "char":
        return loglik / max(n_chars, 1)
    if how == "token":
        return loglik / max(n_tokens, 1)
    raise ValueError(f"unknown normalisation {how!r}")


def label_scores(choice_scores: Sequence[float], owners: Sequence[int], n_labels: int) -> np.ndarray:
    """One score per label: log-sum-exp over that label's verbalizers (one verbalizer: itself)."""
    out = np.full(n_labels, -np.inf)
    for s, lab in zip(choice_scores, owners):
        out[lab] = np.logaddexp(out[lab], s)
    return out


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Label probabilities from scores (rows), sharpened or flattened by ``temperature``."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def content_free_prior(probs: np.ndarray) -> np.ndarray:
    """Average the label distributions of the content-free inputs and renormalise."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1, np.shape(probs)[-1]).mean(axis=0)
    return p / p.sum()


def calibrate(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Zhao et al.'s W = diag(prior)^-1 with b = 0: divide out the prior, renormalise rows."""
    q = np.asarray(probs, dtype=np.float64) / np.asarray(prior, dtype=np.float64)
    return q / q.sum(axis=-1, keepdims=True)
