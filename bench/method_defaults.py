"""Per-method default learning rates: a documented search on the method suite's training data.

Usage: python bench/method_defaults.py [--benchmarks sst2,mnli] [--methods lora,...] [--budget-steps 200]
       [--threads N] [--render-only]

Why: one learning rate does not fit every method (full fine-tuning wants ~1e-4, prompt methods
1e-1), and a default far from a method's optimum makes it look broken (five rows of
configs/all_methods.yaml collapsed to the majority class at their old learning rates). Each
method's default ``lr`` (its parameter model, ``peftlab/methods/<method>.py``) is the value this
search picks, and ``search: {lr: auto}`` grids centre on it.

What it does, per benchmark of bench/method_suite.py (SST-2, MultiNLI; the suite's seeded
8,000-example training subsample, never an evaluation split) and per text method of
configs/all_methods.yaml and configs/peft_zoo.yaml (that row's hyperparameters): peftlab's own lr search
(``peftlab.runners.experiment.search_method``: a fresh model per trial, ``--budget-steps`` optimizer
steps on 90% of the training subsample, scored by the loss on the other 10%) over half-decade
values 10^(k/2) from a decade below the method's default to 1.5 decades above; when the best value
is at an edge of what was tried, the next value past it is tried too (at most ``MAX_EXTEND``
times), so every chosen value is bracketed. The default: the value with the lowest held-out loss
divided by chance loss ln(K) on ``PICK_BENCHES`` (SST-2); each benchmark's own best is what
bench/method_suite.py trains that method with on that benchmark when that best learned (below 0.9
of chance loss), else the default. QLoRA is LoRA's adapter on a
quantised base and takes LoRA's value (the suite's own search chose the same value for both).

Every trial is stored in ``bench/results/method_defaults/<benchmark>.json`` (committed: re-running
continues, and runs only values not tried yet with the same hyperparameters and budget). The
section "Per-method default learning rates" of BENCHMARKS.md is rendered from those files and says
for each method whether its shipped default equals the pick.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

_USER_PRECISION = os.environ.get("PEFTLAB_CPU_PRECISION")  # before benchkit sets its fp32 default

import benchkit  # noqa: E402  (this checkout's peftlab on sys.path)
from method_suite import (BENCHES, DATA_SEED, SAME_AS, SEARCH_RESULTS, SOURCES, Bench, load_source,  # noqa: E402
                          best_index, data_files, ladder, normalised, pick_methods, row_label, suite_config,
                          text_methods, trial_scores, write_data)

from peftlab.config import validate_raw  # noqa: E402
from peftlab.infra.io import atomic_write_text  # noqa: E402
from peftlab.methods import METHODS  # noqa: E402

SECTION = "## Per-method default learning rates"
#: rows whose method is any peft type (``method: peft``): searched for the suite's lr, but their
#: pick sets no default (one default serves every peft type)
GENERIC = ("peft",)
N_TRAIN = 8000
VAL_FRACTION = 0.1
BUDGET_STEPS = 100
#: half-decades around the default: from 10^-1 x to 10^1.5 x (prompt methods often want more)
WINDOW = (-2, 3)
MAX_EXTEND = 2
#: the benchmarks whose trials set the defaults: SST-2, single sentences like the offline default task
#: (drug reviews). MultiNLI's own best per method is shown beside it; it does not move the defaults, and
#: the suite's MultiNLI table uses it only where it learned (bench/method_suite.py INFORMATIVE_MARGIN:
#: 100-step MultiNLI trials stay near chance, so in practice every MultiNLI row trains at its default).
PICK_BENCHES = ("sst2",)
#: what every method trains besides its own parameters; part of each trial's protocol, so trials made
#: when BERT's pooler stayed frozen for adapter, prompt and LoRA-family rows (before it became part
#: of the head, peftlab/estimate/params.py ``_spec_bert``) are not reused
HEAD = "pooler+classifier"


# --- the grid and the pick (pure) ------------------------------------------------------------------

def ladder_index(lr: float) -> int:
    return round(2 * math.log10(lr))


def window(default_lr: float) -> list[int]:
    """Ladder indices from a decade below ``default_lr`` to 1.5 decades above it."""
    c = ladder_index(default_lr)
    return list(range(c + WINDOW[0], c + WINDOW[1] + 1))


def extension(tried: dict[int, float]) -> int | None:
    """The next ladder index to try when the best finite score is at an edge of ``tried``
    (index -> score, lower is better), else None."""
    best = best_index(tried)
    if best is None:
        return None
    if best == max(tried):
        return best + 1
    if best == min(tried):
        return best - 1
    return None


def pick(per_bench: dict[str, dict[int, float]]) -> int | None:
    """The ladder index with the lowest mean normalised loss over the benchmarks that tried it all
    (only indices every benchmark tried count), ties to the smaller learning rate."""
    common = set.intersection(*(set(v) for v in per_bench.values())) if per_bench else set()
    means = {k: sum(v[k] for v in per_bench.values()) / len(per_bench) for k in common}
    finite = {k: m for k, m in means.items() if math.isfinite(m)}
    return min(finite, key=lambda k: (finite[k], k)) if finite else None


def default_pick(per_bench: dict[str, dict[int, float]]) -> int | None:
    """The default's ladder index: ``pick`` over PICK_BENCHES (None until they all have trials)."""
    sel = {k: v for k, v in per_bench.items() if k in PICK_BENCHES}
    return pick(sel) if len(sel) == len(PICK_BENCHES) else None


# --- storage -------------------------------------------------------------------------------------------

def results_path(bench: Bench) -> Path:
    return SEARCH_RESULTS / f"{bench.key}.json"


def load(bench: Bench) -> dict[str, Any]:
    path = results_path(bench)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def protocol(row: dict[str, Any], budget: int) -> dict[str, Any]:
    """What makes two trials comparable: the row's hyperparameters except lr and epochs, the budget, data."""
    return {"params": {k: v for k, v in row.items() if k not in ("lr", "epochs")}, "budget_steps": budget,
            "n_train": N_TRAIN, "val_fraction": VAL_FRACTION, "data_seed": DATA_SEED, "head": HEAD}


def save(bench: Bench, label: str, entry: dict[str, Any]) -> None:
    """Store one row's entry, re-reading the file first: processes searching other rows of the same
    benchmark at the same time (``--methods`` split across cores) keep theirs."""
    store = load(bench)
    store[label] = entry
    atomic_write_text(results_path(bench), json.dumps(store, indent=1, sort_keys=True) + "\n")


# --- running --------------------------------------------------------------------------------------------

def run_trials(bench: Bench, row: dict[str, Any], lrs: list[float], budget: int, threads: int,
               source: dict[str, Any]) -> list[dict[str, Any]]:
    """peftlab's search over ``lrs`` for one row (one process-wide data load per call)."""
    from peftlab.runners.experiment import Encodings, search_method
    from peftlab.tasks import load_task

    root = Path("runs") / "method_suite"
    raw = suite_config(bench, source, [row], [DATA_SEED], root, N_TRAIN, bench.n_eval)
    raw.pop("seeds")
    raw["train"] = {**raw["train"], "num_threads": threads, "checkpoints": False}
    raw["search"] = {"lr": lrs, "budget_steps": budget, "val_fraction": VAL_FRACTION, "metric": "eval_loss"}
    raw["output_dir"] = str(root / bench.key / "defaults_search")
    cfg = validate_raw(raw)
    data = load_task(cfg.task, cfg.train.seed)
    record = search_method(cfg, cfg.methods[0], data, Encodings(cfg, data), quiet=False)
    return [{**t, "precision": record["precision"], "cost_s": record["cost_s"] / len(lrs)} for t in record["trials"]]


def search_bench(bench: Bench, rows: list[dict[str, Any]], budget: int, threads: int, source: dict[str, Any]) -> None:
    store = load(bench)
    for row in rows:
        label = row_label(row)
        if label in SAME_AS:
            continue
        proto = protocol(row, budget)
        entry = store.get(label)
        if not entry or entry["protocol"] != proto:
            entry = store[label] = {"protocol": proto, "trials": {}}
        default = float(METHODS.get(row["method"]).Params.model_fields["lr"].default)
        todo = [k for k in window(default) if str(k) not in entry["trials"]]
        for _ in range(MAX_EXTEND + 1):
            if todo:
                t0 = time.perf_counter()
                trials = run_trials(bench, row, [ladder(k) for k in todo], budget, threads, source)
                for k, t in zip(todo, trials):
                    entry["trials"][str(k)] = t
                save(bench, label, entry)
                print(f"   {bench.key} {label}: {len(todo)} trial(s) in {time.perf_counter() - t0:.0f} s", flush=True)
            scores = trial_scores(entry, len(bench.labels))
            nxt = extension(scores)
            beyond = nxt is not None and abs(nxt - ladder_index(default)) > max(map(abs, WINDOW)) + MAX_EXTEND
            todo = [] if nxt is None or beyond or str(nxt) in entry["trials"] else [nxt]
            if not todo:
                break


# --- rendering (pure over the stored trials) -----------------------------------------------------------

def render(stores: dict[str, dict[str, Any]], rows: list[dict[str, Any]], command: str, hardware: str) -> str:
    benches = [BENCHES[k] for k in stores]
    lines = [SECTION, "",
             "Where each method's default learning rate comes from (issue 19: per-method defaults that train). "
             f"peftlab's own lr search (`search_method`), per text method of {SOURCES} (its hyperparameters), "
             f"on the method suite's seeded {N_TRAIN:,}-example training subsamples of "
             f"{' and '.join(b.title for b in benches)}: each trial a fresh MiniLM-L6 trained for a fixed budget on "
             f"{100 - 100 * VAL_FRACTION:.0f}% of the subsample and scored by its loss on the other "
             f"{100 * VAL_FRACTION:.0f}% (never an evaluation split), over half-decade values from a decade below "
             "the default to 1.5 decades above, extended past an edge until the best value is bracketed. "
             f"Default: the lowest held-out loss / ln(K) (chance = 1.00) on {', '.join(BENCHES[k].title for k in PICK_BENCHES)} "
             "(single sentences, like the offline default task); each benchmark's own best is the learning rate "
             "bench/method_suite.py trains that method with on that benchmark. "
             "QLoRA takes LoRA's pick (same adapter). One training seed per trial: a short-budget proxy for "
             "the full run, not its accuracy.",
             f"Command: `{command}`; hardware: {hardware}.", ""]
    head = "| method | shipped default | default pick | " + " | ".join(
        f"{b.title}: best lr (held-out loss/ln K, acc)" for b in benches) + " | default = pick |"
    lines += [head, "|" + "---|" * (4 + len(benches))]
    detail = []
    for row in rows:
        label = row_label(row)
        method = row["method"]
        default = float(METHODS.get(method).Params.model_fields["lr"].default)
        src = SAME_AS.get(label, label)
        per: dict[str, dict[int, float]] = {}
        cells = []
        for b in benches:
            entry = stores[b.key].get(src)
            if not entry or not entry["trials"]:
                cells.append("not run")
                continue
            scores = trial_scores(entry, len(b.labels))
            per[b.key] = scores
            k = best_index(scores)
            t = entry["trials"][str(k)] if k is not None else None
            cells.append("all diverged" if t is None else
                         f"{ladder(k):g} ({scores[k]:.3f}, {t['accuracy']:.3f})")
            if label in SAME_AS:
                continue
            detail.append(f"| {label} | {b.title} | {entry['protocol']['budget_steps']} | " + ", ".join(
                f"{ladder(k):g}: {'diverged' if not math.isfinite(v) else f'{v:.3f}'}" for k, v in sorted(scores.items()))
                + " |")
        chosen = default_pick(per)
        pick_s = "-" if chosen is None else f"{ladder(chosen):g}"
        same = ("n/a (one default for every peft type)" if method in GENERIC else "-" if chosen is None else
                ("yes" if math.isclose(default, ladder(chosen), rel_tol=1e-6) else "**no**"))
        lines.append(f"| {label} | {default:g} | {pick_s}{' (LoRA)' if label in SAME_AS else ''} | "
                     + " | ".join(cells) + f" | {same} |")
    lines += ["", "Every trial (learning rate: held-out loss / ln K; lower is better):", "",
              "| method | benchmark | steps | trials |", "|---|---|---|---|", *detail]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmarks", default="sst2,mnli")
    ap.add_argument("--methods", default=None, help=f"comma-separated row names of {SOURCES} (default: all)")
    ap.add_argument("--budget-steps", type=int, default=BUDGET_STEPS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (train.num_threads)")
    ap.add_argument("--precision", choices=["probe", "fp32", "bf16"], default=_USER_PRECISION or "probe")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    os.chdir(benchkit.ROOT)
    os.environ["PEFTLAB_CPU_PRECISION"] = args.precision
    source = load_source()
    all_rows = text_methods(source["methods"])
    rows = pick_methods(all_rows, args.methods.split(",") if args.methods else None)
    benches = [BENCHES[b] for b in args.benchmarks.split(",")]
    if not args.render_only:
        for b in benches:
            if not b.present():
                print(f"skip {b.key}: {b.folder} lacks its files (benchmark data is optional)")
                continue
            write_data(b, N_TRAIN, b.n_eval, data_files(Path("runs") / "method_suite", b, N_TRAIN, b.n_eval))
            search_bench(b, rows, args.budget_steps, args.threads, source)
    stores = {k: load(BENCHES[k]) for k in BENCHES if results_path(BENCHES[k]).is_file()}
    if not stores:
        print("nothing measured yet")
        return 0
    cmd = f"python bench/method_defaults.py --budget-steps {args.budget_steps}"
    benchkit.write_section(SECTION, render(stores, all_rows, cmd, benchkit.hardware(args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
