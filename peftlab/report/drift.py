"""Forgetting as a run recorded it (``details.drift``, ``details.lm_loss``; measured by
peftlab.runners.drift): read by the single-run table and by the multi-seed summary alike."""

from __future__ import annotations

from peftlab.results import RunResult


def lm_loss(r: RunResult, key: str) -> float | None:
    d = r.details.get("lm_loss")
    return d.get(key) if isinstance(d, dict) else None


def lm_loss_delta(r: RunResult) -> float | None:
    """Adapted minus base mean token NLL on the reference text (``details.lm_loss``): > 0 = the
    adaptation made the LM worse at ordinary text; None where not measured (encoder rows)."""
    base, adapted = lm_loss(r, "base"), lm_loss(r, "adapted")
    return None if base is None or adapted is None else adapted - base


def drift_cka(r: RunResult) -> float | None:
    """The row's linear CKA of adapted to base features (``details.drift``); None where not measured
    (the baseline, in-context and image rows, ``train.drift: false``, results from before it)."""
    d = r.details.get("drift")
    return d.get("cka") if isinstance(d, dict) else None
