"""Sweep a coefficient of the expression (``--sweep lambda=0:1:0.1``), or the density of a merge
(``--combine ties --sweep density=0.2:1:0.2``), on a validation split.

Each value is composed, put on the base model and scored on the *validation* split (never the
test split: the best value is chosen here). Every point is a RunResult (method ``compose``), so
the sweep sits in the usual comparison table; the curve is written as a table and a plot.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peftlab.compose.adapter import Adapter
from peftlab.compose.core import compose, write
from peftlab.compose.merge import DENSITY, MergeSpec
from peftlab.compose.model import backbone_of, evaluate, labels_of, load_with_adapter
from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import atomic_write_text, dir_size_bytes
from peftlab.results import EpochRecord, RunResult, Timing, environment
from peftlab.tasks.base import Split
from peftlab.backbones.loaders import load_tokenizer
from peftlab.config import TaskConfig, load_config
from peftlab.report.compare import write_comparison
from peftlab.tasks import load_task
from peftlab.tasks.builtin import BUILTIN_TASKS
from peftlab.tasks.loaders import SPLIT_SEED
from peftlab.tasks.sampling import stratified_split


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """``lambda=0:1:0.1`` (start:stop:step, stop included) or ``lambda=0,0.5,1`` -> (name, values)."""
    name, sep, spec = text.partition("=")
    if not sep or not name.isidentifier() or not spec:
        raise PeftlabError(f"--sweep {text!r}: expected NAME=START:STOP:STEP or NAME=V1,V2,...")
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 10) for i in range(n)]
        else:
            values = [float(x) for x in spec.split(",")]
    except ValueError:
        raise PeftlabError(f"--sweep {text!r}: expected NAME=START:STOP:STEP (step > 0) or NAME=V1,V2,...") from None
    if len(values) > 1000:
        raise PeftlabError(f"--sweep {text!r}: {len(values)} points; at most 1000")
    return name, values


@dataclass
class Validation:
    """The split that chooses the coefficient, and how to tokenise it."""

    task: str
    split: Split
    labels: list[str]
    max_length: int = 128
    batch_size: int = 64


def load_validation(eval_arg: str, seed: int = 0) -> Validation:
    """``--eval``: a peftlab config (its eval split is scored: make it a validation split) or a
    builtin task name (a stratified hold-out of its *train* split with the fixed split seed)."""
    if eval_arg.endswith((".yaml", ".yml")) or Path(eval_arg).is_file():
        cfg = load_config(eval_arg)
        data = load_task(cfg.task, cfg.train.seed)
        return Validation(data.name, data.eval, data.label_names, cfg.train.max_length, cfg.train.eval_batch_size)

    if eval_arg not in BUILTIN_TASKS:
        raise PeftlabError(f"--eval {eval_arg!r}: not a config file; {BUILTIN_TASKS.unknown_message(eval_arg)}")
    data = load_task(TaskConfig(source="builtin", name=eval_arg), seed)
    _, val_idx = stratified_split(data.train.labels, 0.2, SPLIT_SEED)
    return Validation(f"{data.name} (validation hold-out of train)", data.train.take(val_idx), data.label_names)


def check_labels(ad: Adapter, val: Validation) -> None:
    have = labels_of(ad)
    generic = all(x.startswith("LABEL_") for x in have)
    if (generic and len(have) != len(val.labels)) or (not generic and have != val.labels):
        raise PeftlabError(f"--eval {val.task}: labels {val.labels} do not match the composed head's {have}")


def score(composed: Adapter, record: dict[str, Any], val: Validation, name: str, base: str | None = None,
          tok: Any = None, force_base: bool = False) -> RunResult:
    """Evaluate one composed adapter on the validation split as a RunResult row."""
    check_labels(composed, val)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peftlab-compose-") as tmp:
        write(composed, record, tmp)
        size = dir_size_bytes(tmp)
        model, tok = load_with_adapter(Path(tmp), composed, base, tok, force_base)
        t1 = time.perf_counter()
        m = evaluate(model, tok, val.split, val.labels, val.max_length, val.batch_size)
        eval_s = time.perf_counter() - t1
    return RunResult(
        name=name, method="compose", method_params=record, task=val.task,
        backbone=str(composed.meta.get("backbone") or composed.meta.get("base_model")), seed=0,
        labels=val.labels, n_eval=len(val.split), accuracy=m["accuracy"], macro_f1=m["macro_f1"],
        per_class=m["per_class"], confusion_matrix=m["confusion_matrix"],
        timing=Timing(wall_s=time.perf_counter() - t0, eval_s=eval_s,
                      eval_examples_per_s=len(val.split) / eval_s if eval_s else None),
        # nothing is trained: one evaluation, recorded as epoch 0
        epochs=[EpochRecord(epoch=0, eval_loss=m["eval_loss"], accuracy=m["accuracy"], macro_f1=m["macro_f1"])],
        environment=environment("cpu"), adapter_bytes=size, precision="fp32", precision_reason="compose evaluates in fp32",
        flags=["collapsed"] if sum(any(col) for col in zip(*m["confusion_matrix"])) <= 1 else [],
    )


def best_index(results: list[RunResult]) -> int:
    """Highest accuracy, then macro-F1; ties go to the earliest (smallest) value."""
    keys = [((r.accuracy or 0.0), (r.macro_f1 or 0.0)) for r in results]
    return max(range(len(keys)), key=lambda i: (keys[i], -i))


def swept_value(params: dict[str, Any], var: str) -> float:
    """The value of ``var`` at one point (its ``method_params``, the compose record): an
    expression variable, or ``density`` (the merge's, when that is what is swept)."""
    variables = params["variables"]
    return float(variables[var] if var in variables else params[DENSITY])


def run_sweep(text: str, pool: dict[str, Adapter], var: str, values: list[float], val: Validation,
              mode: str = "parameter", rank: int | None = None, head: str = "average",
              base: str | None = None, quiet: bool = False, force_base: bool = False,
              merge: MergeSpec = MergeSpec()) -> tuple[list[RunResult], int]:
    """Score every value of ``var`` (an expression variable, or ``density``: the fraction each
    task vector keeps in ``merge``); returns (one RunResult per value, index of the best)."""
    results: list[RunResult] = []
    tok = None
    for v in values:
        variables, spec = ({}, merge.with_density(v)) if var == DENSITY else ({var: v}, merge)
        composed, record = compose(text, pool, mode, rank, head, variables, base, force_base, spec)
        if tok is None:
            tok = load_tokenizer(backbone_of(composed, base))
        r = score(composed, record, val, f"{var}={v:g}", base, tok, force_base)
        results.append(r)
        if not quiet:
            print(f"{var}={v:g}: accuracy {r.accuracy:.4f} macro-F1 {r.macro_f1:.4f}", file=sys.stderr, flush=True)
    return results, best_index(results)


def sweep_table(results: list[RunResult], var: str, best: int, text: str) -> str:
    lines = [f"# Sweep of {var} in `{text}`", "",
             f"Scored on {results[0].task} ({results[0].n_eval} examples); best {var} = "
             f"{swept_value(results[best].method_params, var):g} (highest accuracy, then macro-F1).", "",
             f"| {var} | accuracy | macro-F1 | eval loss | |", "|---|---|---|---|---|"]
    for i, r in enumerate(results):
        v = swept_value(r.method_params, var)
        mark = "best" if i == best else ""
        lines.append(f"| {v:g} | {r.accuracy:.4f} | {r.macro_f1:.4f} | {r.epochs[0].eval_loss:.4f} | {mark} |")
    return "\n".join(lines) + "\n"


def sweep_csv(results: list[RunResult], var: str) -> str:
    rows = [f"{var},accuracy,macro_f1,eval_loss"]
    rows += [f"{swept_value(r.method_params, var):g},{r.accuracy:.6f},{r.macro_f1:.6f},{r.epochs[0].eval_loss:.6f}"
             for r in results]
    return "\n".join(rows) + "\n"


def plot_sweep(results: list[RunResult], var: str, best: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [swept_value(r.method_params, var) for r in results]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(xs, [r.accuracy for r in results], "o-", label="accuracy")
    ax.plot(xs, [r.macro_f1 for r in results], "s--", label="macro-F1")
    ax.axvline(xs[best], color="grey", lw=0.8, ls=":")
    ax.set_xlabel(var)
    ax.set_ylabel("validation score")
    ax.set_title(results[0].method_params["expression"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_sweep(results: list[RunResult], var: str, best: int, text: str, out: Path) -> None:
    """sweep.md, sweep.csv, sweep.png and one results.json per point under sweep/."""
    for r in results:
        r.write(out / "sweep" / r.name)
    write_comparison(results, out / "sweep")
    atomic_write_text(out / "sweep.md", sweep_table(results, var, best, text))
    atomic_write_text(out / "sweep.csv", sweep_csv(results, var))
    plot_sweep(results, var, best, out / "sweep.png")
