"""Per-method learning-rate search on a held-out slice of the training data.

One shared learning rate is unfair: full fine-tuning wants ~2e-5, LoRA ~5e-4, prompt tuning 1e-2
or more. With ``search:`` in the config every method first trains a short, explicitly budgeted
trial per grid value on part of the training split and is scored on the rest of it (never on the
evaluation split); the full run then uses the best value. ``lr: auto`` is a log-spaced grid
around the method's own default (its known good range): default x 10^(-1, -0.5, 0, 0.5, 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from peftlab.config import SearchConfig
from peftlab.infra.config_base import MethodParams
from peftlab.infra.errors import PeftlabError
from peftlab.results.metrics import selection_value
from peftlab.results import EpochRecord
from peftlab.runners.batching import Features

AUTO_EXPONENTS = (-1.0, -0.5, 0.0, 0.5, 1.0)

#: trains ``params`` on the first Features and returns the last epoch's record on the second
#: (None when the loss diverged)
TrialRunner = Callable[[MethodParams, Features, Features], EpochRecord | None]


def auto_grid(default_lr: float) -> list[float]:
    return [float(f"{default_lr * 10 ** e:.3g}") for e in AUTO_EXPONENTS]


def lr_grid(search: SearchConfig, params: MethodParams) -> list[float]:
    """The explicit list, or the auto grid around the method's default learning rate."""
    if search.lr != "auto":
        return list(search.lr)
    return auto_grid(float(type(params).model_fields["lr"].default))


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (trial-train, held-out) indices of the training split."""
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise PeftlabError(f"search.val_fraction: {n} training examples leave none to train the trials on")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def trial_epochs(n_train: int, batch_size: int, budget_steps: int) -> tuple[int, int]:
    """(examples to use, epochs) so that a trial runs about ``budget_steps`` optimizer steps."""
    n_used = min(n_train, budget_steps * batch_size)
    per_epoch = math.ceil(n_used / batch_size)
    return n_used, max(1, math.ceil(budget_steps / per_epoch))


@dataclass
class Trial:
    lr: float
    score: float  # lower is better: eval loss, or 1 - accuracy / macro-F1
    eval_loss: float | None
    accuracy: float | None
    steps: int
    macro_f1: float | None = None


def score(rec: EpochRecord | None, metric: str) -> float:
    """Lower is better: eval loss, or 1 - the selection metric (peftlab.results.metrics.selection_value);
    a diverged or missing trial scores +inf."""
    if rec is None:
        return math.inf
    if metric == "eval_loss":
        value = rec.eval_loss
    else:
        higher = selection_value(rec, metric)
        value = None if higher is None else 1.0 - higher
    return math.inf if value is None or not math.isfinite(value) else float(value)


def best_lr(trials: list[Trial]) -> float:
    """The lowest score; ties go to the earlier grid value. All diverged: an error naming the grid."""
    finite = [t for t in trials if math.isfinite(t.score)]
    if not finite:
        raise PeftlabError(f"search.lr: every trial diverged ({[t.lr for t in trials]}); try smaller values")
    return min(finite, key=lambda t: t.score).lr


def search_lr(params: MethodParams, search: SearchConfig, train_f: Features, seed: int, batch_size: int,
              run_trial: TrialRunner, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the trials; returns the record stored in results.json (``chosen`` is the value to use)."""
    t0 = time.perf_counter()
    tr_idx, val_idx = holdout(len(train_f), search.val_fraction, seed)
    n_used, epochs = trial_epochs(len(tr_idx), batch_size, search.budget_steps)
    trial_train = Features([train_f.items[i] for i in tr_idx[:n_used]])
    held_out = Features([train_f.items[i] for i in val_idx])
    steps = epochs * math.ceil(n_used / batch_size)
    trials = []
    for lr in lr_grid(search, params):
        rec = run_trial(params.model_copy(update={"lr": lr, "epochs": epochs}), trial_train, held_out)
        trials.append(Trial(lr=lr, score=score(rec, search.metric), eval_loss=rec and rec.eval_loss,
                            accuracy=rec and rec.accuracy, steps=steps, macro_f1=rec and rec.macro_f1))
        say(f"   search {params.label}: lr {lr:g} -> {search.metric} "
            f"{trials[-1].score if search.metric == 'eval_loss' else 1 - trials[-1].score:.4f}")
    chosen = best_lr(trials)
    return {"chosen": chosen, "metric": search.metric, "budget_steps": steps, "n_train": n_used,
            "n_val": len(held_out), "trials": [{k: v for k, v in asdict(t).items()} for t in trials],
            "cost_s": time.perf_counter() - t0}
