"""Method comparison suite: every text method of configs/all_methods.yaml and configs/peft_zoo.yaml on SST-2 and MultiNLI.

Usage: python bench/method_suite.py [--benchmarks sst2,mnli] [--n-train 8000] [--n-eval N] [--seeds 0,1,2]
       [--methods lora,full,...] [--parallel N] [--precision probe|fp32|bf16] [--quick] [--render-only]

Hours of CPU, built to be stopped and re-run (kill -9 included). Per benchmark it writes
``runs/method_suite/<bench>/``:

* ``data/train-N.jsonl``, ``data/eval-M.jsonl``: the seeded stratified subsample (peftlab's own loader,
  seed 0) of ../shared/data, written once, so every seed trains and is scored on the same examples
  (peftlab's rule for several seeds: they vary training only);
* ``config.yaml``: one peftlab config, the methods and train block of all_methods.yaml with
  ``seeds``; each method's learning rate is its best value for this benchmark in the documented
  per-method search of bench/method_defaults.py (bench/results/method_defaults/<bench>.json: trials
  on held-out training data only, 100 steps each, the same search that sets the methods' defaults),
  chosen once per method and benchmark so the seeds vary training only;
* ``run/seed-N/<method>/``: each (seed, method) row as its own single-method peftlab run
  (``configs/seed-N/<method>.yaml``, run as ``python -m peftlab run <that file>``; ``--parallel N``
  runs N rows at once with the cores shared out). peftlab's resume continues a killed row from its
  newest checkpoint, so re-running this script continues where it stopped;
* ``bench/results/method_suite/<bench>/seed-N/<method>.json`` (committed): each finished row's
  result with the fingerprint of its config. The run folders are scratch that a new machine lacks;
  the archive is what carries a partial suite from one machine (or session) to the next, and a row
  whose archived fingerprint matches is not trained again.

Seeds are the outer loop (seed 0 on every benchmark first), so a partial run already has a whole
single-seed table. Then the section "## Method comparison suite" of BENCHMARKS.md is rendered
from the results files (what is measured, how many planned method x seed rows are done, what
remains); ``--render-only`` renders without training. ``--quick``: 64 train / 32 eval examples,
seed 0, three methods, one epoch, each row's own lr, into runs/method_suite_quick/ and
BENCHMARKS.quick.md (a smoke run of this script, never the real section).
Skips (exit 0) when ../shared/data lacks the benchmarks' files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_USER_PRECISION = os.environ.get("PEFTLAB_CPU_PRECISION")  # before benchkit sets its fp32 default

import benchkit  # noqa: E402  (this checkout's peftlab on sys.path)
import yaml  # noqa: E402
from train_throughput import DATA as MNLI_DATA  # noqa: E402
from train_throughput import LABELS as MNLI_LABELS  # noqa: E402

from peftlab.config import ExperimentConfig, TaskConfig, dump_config, load_raw, validate_raw  # noqa: E402
from peftlab.infra.config_base import MethodParams  # noqa: E402
from peftlab.infra.errors import PeftlabError  # noqa: E402
from peftlab.infra.io import atomic_write_text  # noqa: E402
from peftlab.methods import METHODS  # noqa: E402
from peftlab.report.seeds import BEST, NOT_SIGNIFICANT, pm, select_metric, summarise, versus_best  # noqa: E402
from peftlab.results import RESULTS_FILE, RunResult, read_result  # noqa: E402
from peftlab.runners.rows import BASELINE, finished_result  # noqa: E402
from peftlab.runners.seeds import seed_config, seed_dir  # noqa: E402

SECTION = "## Method comparison suite"
SOURCE_CONFIG = "configs/all_methods.yaml"
#: rows compared besides SOURCE_CONFIG's: the methods added through peft (issue 20), same train block
EXTRA_CONFIGS = ("configs/peft_zoo.yaml",)
SOURCES = " and ".join(f"`{c}`" for c in (SOURCE_CONFIG, *EXTRA_CONFIGS))
BACKBONE = "minilm-l6"
DATA_SEED = 0  # the subsample; the seeds vary training only
#: where bench/method_defaults.py keeps its trials (one file per benchmark); the suite trains each
#: method with its best value there
SEARCH_RESULTS = benchkit.ROOT / "bench" / "results" / "method_defaults"
#: every finished row's result, kept in the repository (runs/ is scratch that a new machine lacks):
#: ``<bench>/seed-N/<label>.json`` with the fingerprint of the row config that produced it
ARCHIVE = benchkit.ROOT / "bench" / "results" / "method_suite"
#: methods that take another method's searched value (same trainable module, different base)
SAME_AS = {"qlora": "lora"}
#: a checkpoint every 100 optimizer steps besides each epoch end: a kill loses at most that much
CHECKPOINT_EVERY = 100
QUICK = {"n_train": 64, "n_eval": 32, "seeds": "0", "methods": "full,lora,prompt_tuning"}
#: what the issue quotes (T5-small on IMDB; RoBERTa-base on MNLI in the LoRA paper)
PUBLISHED = ("T5-small on IMDB: full 90.1, adapter 90.7, LoRA r=8 88.9, soft prompt 87.0; "
             "RoBERTa-base on MNLI (LoRA paper): full 87.6, LoRA 87.5")
NEAR_FULL = ("houlsby", "pfeiffer", "prefix_tuning", "ia3")  # "within a few points of full fine-tuning"
FEW_POINTS = 3.0
LORA_POINTS = 1.0
#: a method whose mean accuracy is within this many points of the majority class has not learned the task
NEAR_CHANCE_POINTS = 5.0


@dataclass(frozen=True)
class Bench:
    key: str
    title: str
    folder: Path
    train_file: str
    eval_file: str
    text_column: str
    pair_column: str | None
    labels: tuple[str, ...]
    n_eval: int  # default number of evaluation examples

    def present(self) -> bool:
        return (self.folder / self.train_file).is_file() and (self.folder / self.eval_file).is_file()


BENCHES = {
    "sst2": Bench("sst2", "SST-2", benchkit.SHARED / "data" / "sst2", "train.jsonl", "validation.jsonl", "text", None,
                  ("negative", "positive"), 872),
    "mnli": Bench("mnli", "MultiNLI", MNLI_DATA, "train.jsonl.gz", "validation_matched.jsonl", "premise", "hypothesis",
                  tuple(MNLI_LABELS), 2000),
}


# --- config generation (pure) -----------------------------------------------------------------

def load_source() -> dict[str, Any]:
    """all_methods.yaml's raw config with the rows of EXTRA_CONFIGS appended (their train blocks must
    be the same: one protocol for every row of the suite)."""
    source = load_raw(SOURCE_CONFIG)
    for path in EXTRA_CONFIGS:
        extra = load_raw(path)
        if extra.get("train") != source.get("train"):
            raise SystemExit(f"error: {path}: its train block differs from {SOURCE_CONFIG}'s; the suite needs one")
        source = {**source, "methods": [*source["methods"], *extra["methods"]]}
    return source


def text_methods(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a config whose method fine-tunes a text classifier (not in-context scoring)."""
    return [r for r in rows if METHODS.get(r["method"]).runner == "train"]


def row_label(row: dict[str, Any]) -> str:
    """The row's label as peftlab names it (``name``, else the method's own rule: ``peft-<type>``
    for a generic peft row)."""
    return METHODS.get(row["method"]).Params.model_validate(row).label


def pick_methods(rows: list[dict[str, Any]], wanted: list[str] | None) -> list[dict[str, Any]]:
    """``rows`` restricted to the labels in ``wanted`` (None: all); an unknown label is an error."""
    if not wanted:
        return rows
    known = [row_label(r) for r in rows]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"error: --methods {','.join(unknown)}: not a text method of {SOURCES} ({', '.join(known)})")
    return [r for r in rows if row_label(r) in wanted]


def run_root(quick: bool) -> Path:
    return Path("runs") / ("method_suite_quick" if quick else "method_suite")


def data_files(root: Path, bench: Bench, n_train: int, n_eval: int) -> tuple[Path, Path]:
    """The subsample's files; their names carry the sizes, so another size is another config (and
    peftlab's resume starts it afresh instead of keeping rows trained on other data)."""
    data = root / bench.key / "data"
    return data / f"train-{n_train}.jsonl", data / f"eval-{n_eval}.jsonl"


def ladder(k: int) -> float:
    """The k-th half-decade learning rate 10^(k/2), 3 significant digits (the searched values)."""
    return float(f"{10 ** (k / 2):.3g}")


def normalised(loss: float | None, num_labels: int) -> float:
    """Held-out loss as a fraction of chance loss ln(K); a diverged trial is +inf."""
    return math.inf if loss is None or not math.isfinite(loss) else loss / math.log(num_labels)


def trial_scores(entry: dict[str, Any], num_labels: int) -> dict[int, float]:
    """A stored method's trials as ladder index -> normalised held-out loss (lower is better)."""
    return {int(k): normalised(t["eval_loss"], num_labels) for k, t in entry["trials"].items()}


def best_index(scores: dict[int, float]) -> int | None:
    """The lowest finite score's index, ties to the smaller learning rate; None when all diverged."""
    finite = [k for k, v in scores.items() if math.isfinite(v)]
    return min(finite, key=lambda k: (scores[k], k)) if finite else None


def searched(bench: Bench) -> dict[str, Any]:
    """bench/method_defaults.py's stored trials for ``bench`` ({} before it ran)."""
    path = SEARCH_RESULTS / f"{bench.key}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


#: a benchmark's best trial must beat chance loss by this much (normalised loss below 1 - margin) to
#: set a method's lr there; otherwise its trials barely learned within their budget and the best of them
#: is a poor guide, so the method trains at its default (the SST-2 pick). Why 0.1: on MultiNLI every
#: 100-step trial stayed above 0.91 of chance, and the best of them misled: LoRA's 3.16e-3 (0.913 of
#: chance, the lowest of all) left training loss at ln 3 for all 5 epochs of the suite row (accuracy =
#: majority class), where its default 1e-3 reached 0.628 after one epoch. On SST-2 every method's best
#: trial is at most 0.85 of chance.
INFORMATIVE_MARGIN = 0.1
#: the benchmark whose trials set the shipped defaults (bench/method_defaults.py PICK_BENCHES)
PICK_BENCH = "sst2"


def searched_lrs(bench: Bench, rows: list[dict[str, Any]], store: dict[str, Any],
                 default_store: dict[str, Any] | None = None) -> tuple[dict[str, float], list[str], list[str]]:
    """Each row's learning rate on ``bench``, the labels that fell back to their default, and the labels
    without trials on ``bench`` (not run until bench/method_defaults.py has searched them).

    The value is the row's best stored trial on ``bench`` when that trial learned (normalised loss
    below ``1 - INFORMATIVE_MARGIN``), else the row's default: its best trial in ``default_store`` (the
    trials that set the shipped defaults, SST-2's; for a named method that is its shipped default, and a
    generic ``method: peft`` row, which has no default of its own, gets its peft type's pick), or the
    method's default lr when that store has none."""
    out, fallback, missing = {}, [], []
    for row in rows:
        label = row_label(row)
        entry = store.get(SAME_AS.get(label, label))
        scores = trial_scores(entry, len(bench.labels)) if entry and entry["trials"] else {}
        k = best_index(scores)
        if k is None:
            missing.append(label)
        elif scores[k] < 1 - INFORMATIVE_MARGIN:
            out[label] = ladder(k)
        else:
            pick = (default_store or {}).get(SAME_AS.get(label, label))
            d = best_index(trial_scores(pick, 2)) if pick and pick["trials"] else None  # K only scales
            out[label] = ladder(d) if d is not None else float(
                METHODS.get(row["method"]).Params.model_fields["lr"].default)
            fallback.append(label)
    return out, fallback, missing


def suite_config(bench: Bench, source: dict[str, Any], methods: list[dict[str, Any]], seeds: list[int],
                 root: Path, n_train: int, n_eval: int, lrs: dict[str, float] | None = None,
                 epochs: int | None = None) -> dict[str, Any]:
    """The peftlab config of one benchmark (paths relative to the repository root).

    ``source`` is all_methods.yaml's raw dict (its train block is kept); ``lrs`` (label -> value)
    replaces the rows' learning rates (a row it lacks keeps its own, and is not run: see ``unsearched``); ``epochs`` (the smoke run) replaces every epoch count, the
    per-method ones included."""
    train_file, eval_file = data_files(root, bench, n_train, n_eval)
    rows = [{**{k: v for k, v in m.items() if not (epochs and k == "epochs")},
             **({"lr": lrs[row_label(m)]} if lrs and row_label(m) in lrs else {})} for m in methods]
    train = {**source.get("train", {}), "seed": DATA_SEED, "checkpoint_every": CHECKPOINT_EVERY,
             **({"epochs": epochs} if epochs else {})}
    return {
        "name": f"method_suite_{bench.key}",
        "backbone": BACKBONE,
        "task": {"source": "jsonl", "name": bench.key, "train_file": str(train_file),
                 "eval_file": str(eval_file), "text_column": bench.text_column,
                 **({"text_pair_column": bench.pair_column} if bench.pair_column else {}),
                 "label_column": "label", "label_names": list(bench.labels)},
        "methods": rows,
        "train": train,
        "seeds": seeds,
        "output_dir": str(root / bench.key / "run"),
    }


def subsample_lines(texts: list[str], pairs: list[str] | None, labels: list[int], bench: Bench) -> str:
    """A split as the JSONL it came from (the columns of ``bench``, label names)."""
    out = []
    for i, text in enumerate(texts):
        row = {bench.text_column: text, **({bench.pair_column: pairs[i]} if bench.pair_column and pairs else {}),
               "label": bench.labels[labels[i]]}
        out.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(out) + "\n"


# --- progress (pure over results; the loader reads the run folders) ------------------------------

@dataclass
class BenchView:
    """What one benchmark has measured so far, for the section."""

    bench: Bench
    planned: list[str]  # method labels, config order
    seeds: list[int]
    n_train: int
    n_eval: int
    results: list[RunResult] = field(default_factory=list)  # finished (ok) and failed rows of the current config
    baseline: RunResult | None = None
    search_cost: dict[str, float] = field(default_factory=dict)  # label -> seconds of its documented lr search
    at_default: list[str] = field(default_factory=list)  # labels whose trials here stayed at chance (default lr)
    unsearched: list[str] = field(default_factory=list)  # labels without trials here yet (not run)

    def done(self) -> set[tuple[int, str]]:
        return {(r.seed, r.name) for r in self.results if r.status == "ok"}

    def remaining(self) -> list[tuple[int, str]]:
        done = self.done()
        return [(s, m) for s in self.seeds for m in self.planned if (s, m) not in done]

    def failed(self) -> list[RunResult]:
        return [r for r in self.results if r.status == "failed"]


def search_costs(store: dict[str, Any]) -> dict[str, float]:
    """Seconds each stored method's lr search took (its trials' sum); SAME_AS labels share their source's."""
    own = {k: sum(t.get("cost_s", 0.0) for t in e["trials"].values()) for k, e in store.items()}
    return {**own, **{k: own[v] for k, v in SAME_AS.items() if v in own}}


def row_config(cfg: ExperimentConfig, seed: int, params: MethodParams) -> ExperimentConfig:
    """One method of one seed as its own single-method peftlab run, in ``<run>/seed-N/<label>/``.

    Each row is its own run so that its config never changes while others finish: peftlab's resume
    then continues a killed row from its checkpoint, and the row's fingerprint (``row_sha``) names
    exactly what was trained (data files, train block, seed, the method's parameters)."""
    scfg = seed_config(cfg, seed)
    return scfg.model_copy(update={"methods": [params], "output_dir": str(Path(scfg.output_dir) / params.label)})


def row_sha(rcfg: ExperimentConfig) -> str:
    return hashlib.sha256(dump_config(rcfg).encode("utf-8")).hexdigest()


def archive_path(bench: Bench, seed: int, label: str, archive: Path = ARCHIVE) -> Path:
    return archive / bench.key / f"seed-{seed}" / f"{label}.json"


def archive_row(bench: Bench, rcfg: ExperimentConfig, result: RunResult, archive: Path = ARCHIVE,
                parallel: int = 1) -> None:
    """Keep a finished row's result in the repository (the run folders are scratch: a new machine has
    none), with the fingerprint of the config that produced it and that config itself (see
    :func:`same_training`), the CPU, and how many rows ran at once."""
    payload = {"config_sha": row_sha(rcfg), "config": rcfg.model_dump(mode="json"), "cpu": benchkit.cpu_model(),
               "parallel": parallel, "result": result.model_dump(mode="json")}
    atomic_write_text(archive_path(bench, rcfg.train.seed, result.name, archive),
                      json.dumps(payload, indent=1, sort_keys=True) + "\n")


def same_training(stored: Any, obj: Any) -> bool:
    """Whether a row config stored by an older peftlab (``stored``, its JSON dump) trains what ``obj``
    (the config now) trains, although their fingerprints differ.

    Why: the fingerprint hashes the whole resolved config, so any field added to peftlab's config
    later (with a default that keeps the old behaviour, as fields are added) would change every row's
    fingerprint and throw away hours of archived rows. Accepted: fields ``obj`` has and ``stored``
    lacks, set to their declared default. Everything else must be equal: a changed value, a changed
    default of an existing field, or a removed field means another training."""
    from pydantic import BaseModel

    if isinstance(obj, BaseModel):
        if not isinstance(stored, dict):
            return False
        now = obj.model_dump(mode="json")
        fields = type(obj).model_fields
        if set(stored) - set(now):
            return False  # a field peftlab no longer has
        for name, value in now.items():
            if name in stored:
                if not same_training(stored[name], getattr(obj, name)):
                    return False
            else:
                default = obj.model_copy(update={name: fields[name].get_default(call_default_factory=True)})
                if default.model_dump(mode="json")[name] != value:
                    return False
        return True
    if isinstance(obj, (list, tuple)):
        return isinstance(stored, list) and len(stored) == len(obj) and all(
            same_training(s, o) for s, o in zip(stored, obj))
    from pydantic import TypeAdapter

    return TypeAdapter(Any).dump_python(obj, mode="json") == stored


def archived_row(bench: Bench, rcfg: ExperimentConfig, archive: Path = ARCHIVE) -> RunResult | None:
    """The archived result of this row config (same fingerprint, or :func:`same_training`), else None."""
    path = archive_path(bench, rcfg.train.seed, rcfg.methods[0].label, archive)
    if not path.is_file():
        return None
    payload = json.loads(path.read_text(encoding="utf-8"))
    if payload.get("config_sha") != row_sha(rcfg) and not (
            "config" in payload and same_training(payload["config"], rcfg)):
        return None
    result = RunResult.model_validate(payload["result"])
    result.environment.setdefault("cpu", payload.get("cpu", "unknown CPU"))
    result.environment.setdefault("suite_parallel", payload.get("parallel", 1))
    return result


def load_view(bench: Bench, cfg: ExperimentConfig, n_train: int, n_eval: int,
              search_cost: dict[str, float] | None = None, archive: Path = ARCHIVE) -> BenchView:
    """The finished and failed rows of ``cfg``'s seeds: a row's own run folder when it holds this
    very row config, else the repository's archive of it (same fingerprint); anything trained with
    another config (another size, lr or train block) counts as not run."""
    view = BenchView(bench, [p.label for p in cfg.methods], cfg.seed_list, n_train, n_eval,
                     search_cost=dict(search_cost or {}))
    for s in cfg.seed_list:
        for params in cfg.methods:
            rcfg = row_config(cfg, s, params)
            rdir = Path(rcfg.output_dir)
            cfile = rdir / "config.yaml"
            here = cfile.is_file() and cfile.read_text(encoding="utf-8") == dump_config(rcfg)
            # the archive holds finished rows only; the run folder adds one not archived yet, or a failure
            result = archived_row(bench, rcfg, archive) or (row_result(rdir / params.label, params) if here else None)
            if result is not None:
                result.environment.setdefault("cpu", benchkit.cpu_model())  # a run folder is this machine's
            view.results += [result] if result is not None else []
            if view.baseline is None and here and (rdir / BASELINE / RESULTS_FILE).is_file():
                view.baseline = read_result(rdir / BASELINE / RESULTS_FILE)
    base = baseline_path(bench, n_train, n_eval, archive)
    if view.baseline is None and base.is_file():
        view.baseline = RunResult.model_validate_json(base.read_text(encoding="utf-8"))
    return view


def row_result(mdir: Path, params: MethodParams) -> RunResult | None:
    """peftlab's own verdict on a row (finished_result: ok, same parameters, adapter saved), else its
    ``failed`` result, else None (not run, or still running)."""
    done = finished_result(mdir, params)
    if done is not None:
        return done
    try:
        r = read_result(mdir / RESULTS_FILE)
    except PeftlabError:  # absent or half-written: not done
        return None
    return r if r.status == "failed" and r.method_params == params.model_dump(mode="json") else None


# --- rendering (pure) ------------------------------------------------------------------------------

VERDICT = {BEST: "best", NOT_SIGNIFICANT: "n.s.", "below best": "below"}


def _fmt_lr(values: list[float]) -> str:
    return " / ".join(f"{v:.2g}" for v in sorted(set(values))) if values else "-"


def method_row(label: str, rows: list[RunResult], verdict: str, search_s: float | None = None,
               at_default: bool = False) -> str:
    ok = [r for r in rows if r.status == "ok"]
    failed = len(rows) - len(ok)
    if not ok:
        return f"| {label} | 0{f' ({failed} failed)' if failed else ''} | not run yet | | | | | | | |"
    s = summarise(ok)[0]
    pct = next((r.params.percent_trainable for r in ok if r.params), None)
    train_s = [r.timing.train_s for r in ok if r.timing]
    peak = [r.peak_memory_bytes for r in ok if r.peak_memory_bytes]
    lrs = [r.method_params["lr"] for r in ok if "lr" in r.method_params]
    collapsed = sum("collapsed" in r.flags for r in ok)
    return (f"| {label} | {len(ok)}{f' ({failed} failed)' if failed else ''} | {pm(s.acc)} | {pm(s.f1)} | "
            f"{'-' if pct is None else f'{pct:.3g}'} | "
            f"{sum(train_s) / len(train_s):.0f} | {'-' if search_s is None else f'{search_s:.0f}'} | "
            f"{max(peak) / 2**20:.0f} | {_fmt_lr(lrs)}{' (default)' if at_default else ''} | "
            f"{VERDICT.get(verdict, verdict)}{f'; collapsed in {collapsed}' if collapsed else ''} |")


def bench_table(view: BenchView) -> list[str]:
    ok = [r for r in view.results if r.status == "ok"]
    verdict = versus_best(summarise(ok), select_metric(ok)) if ok else {}
    lines = ["| method | seeds done | accuracy | macro-F1 | trainable % | train s | search s | peak MB | lr | vs best |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [method_row(m, [r for r in view.results if r.name == m], verdict.get(m, ""), view.search_cost.get(m),
                         m in view.at_default) for m in view.planned]
    if view.baseline is not None and view.baseline.accuracy is not None:
        lines.append(f"| majority class (reference) | - | {view.baseline.accuracy:.4f} | "
                     f"{view.baseline.macro_f1 or 0:.4f} | 0 | | | | | |")
    return lines


def _means(view: BenchView) -> dict[str, tuple[float, float]]:
    """Mean ± std accuracy per method kind (the first row of each kind), finished seeds only."""
    out: dict[str, tuple[float, float]] = {}
    for s in summarise([r for r in view.results if r.status == "ok"]):
        if s.acc is not None and s.kind not in out:
            out[s.kind] = s.acc
    return out


def ordering(view: BenchView) -> str:
    """The measured ordering and the published statements checked against it (a template: every
    claim is computed from the results, none is written by hand)."""
    ok = [r for r in view.results if r.status == "ok"]
    if not ok:
        return f"{view.bench.title}: nothing measured yet."
    sums = sorted((s for s in summarise(ok) if s.acc is not None), key=lambda s: -s.acc[0])
    verdict = versus_best(sums, select_metric(ok))
    order = f"{sums[0].name} {100 * sums[0].acc[0]:.1f}" + "".join(
        f" {'=' if b.acc[0] == a.acc[0] else '>'} {b.name} {100 * b.acc[0]:.1f}" for a, b in zip(sums, sums[1:]))
    tied = [s.name for s in sums if verdict.get(s.name) == NOT_SIGNIFICANT]
    n_seeds = sorted({len(s.seeds) for s in sums})
    parts = [f"{view.bench.title}, measured ordering (mean accuracy %, {'/'.join(map(str, n_seeds))} seed(s) per row): "
             f"{order}. Within the spread of the best ({sums[0].name}): {', '.join(tied) or 'none'}"
             + (" (one seed: no spread, so no row can be within it)." if n_seeds == [1] else ".")]
    if view.baseline is not None and view.baseline.accuracy is not None:
        floor = 100 * view.baseline.accuracy
        weak = [f"{s.name} {100 * s.acc[0]:.1f}" for s in sums if 100 * s.acc[0] - floor < NEAR_CHANCE_POINTS]
        if weak:
            parts.append(f"Within {NEAR_CHANCE_POINTS:g} points of the majority class ({floor:.1f}), so not "
                         f"learning this task: {', '.join(weak)}.")
    means = _means(view)
    if "full" not in means:
        parts.append("Full fine-tuning is not measured yet, so the published gaps to it cannot be checked.")
        return " ".join(parts)
    full = 100 * means["full"][0]

    def gap(kind: str) -> float:
        return 100 * means[kind][0] - full

    near = [k for k in NEAR_FULL if k in means]
    if near:
        inside = [k for k in near if gap(k) >= -FEW_POINTS]
        parts.append(f"Published: bottleneck adapters, prefix tuning and (IA)^3 land within a few points of full "
                     f"fine-tuning. Measured gaps to full: {', '.join(f'{k} {gap(k):+.1f}' for k in near)}; within "
                     f"{FEW_POINTS:g} points: {', '.join(inside) or 'none'}"
                     f"{'; not within: ' + ', '.join(k for k in near if k not in inside) if len(inside) < len(near) else ''}.")
    if "lora" in means:
        parts.append(f"Published: LoRA matches full fine-tuning (87.5 vs 87.6 on MNLI). Measured: LoRA {gap('lora'):+.1f} "
                     f"points, {'within' if abs(gap('lora')) <= LORA_POINTS else 'not within'} {LORA_POINTS:g} point.")
    peers = [k for k in ("lora", "houlsby", "pfeiffer") if k in means]
    if "prompt_tuning" in means and peers:
        trails = all(means["prompt_tuning"][0] < means[k][0] for k in peers)
        parts.append(f"Published: prompt tuning trails on small models. Measured: prompt_tuning {gap('prompt_tuning'):+.1f} "
                     f"points to full, {'below' if trails else 'not below'} every one of {', '.join(peers)}: "
                     f"{'holds' if trails else 'does not hold'}.")
    return " ".join(parts)


def remaining_text(views: list[BenchView]) -> str:
    lines = []
    for v in views:
        left = v.remaining()
        for s in v.seeds:
            names = [m for seed, m in left if seed == s]
            if names:
                what = f"all {len(v.planned)} methods" if len(names) == len(v.planned) else ", ".join(
                    f"{n} (lr not searched yet)" if n in v.unsearched else n for n in names)
                lines.append(f"- {v.bench.title} seed {s}: {what}")
        for r in v.failed():
            lines.append(f"- {v.bench.title} seed {r.seed}: {r.name} failed ({(r.error or '').splitlines()[0][:160]})")
    return "\n".join(lines)


def precision_text(rows: list[RunResult]) -> str:
    """How the measured rows computed: the most common precision, and the rows that differ with their reason."""
    if not rows:
        return "precision: -"
    main = Counter(r.precision or "fp32" for r in rows).most_common(1)[0][0]
    other = sorted({f"{r.name} {r.precision or 'fp32'} ({r.precision_reason or 'no reason recorded'})"
                    for r in rows if (r.precision or "fp32") != main})
    return f"precision {main}" + (f", except {'; '.join(other)}" if other else "")


#: peftlab.backbones.dropout's choices, as the section names them
SAMPLER_NAMES = {"bits": "32-bit sampler", "torch": "torch's bernoulli_",
                 "unrecorded": "torch's bernoulli_ or no dropout (before the sampler was recorded, or the probe)"}


def hardware_text(rows: list[RunResult], fallback: str) -> str:
    """Where the measured rows ran (rows may come from several machines through the archive), with
    how many torch threads, and which rows started on a machine busier than its cores."""
    if not rows:
        return f"hardware: {fallback}"
    cpus = Counter(f"{r.environment.get('cpu', 'unknown CPU')} ({r.environment.get('cores', '?')} cores)" for r in rows)
    threads = sorted({str(r.environment.get("threads", "?")) for r in rows})
    at_once = sorted({int(r.environment.get("suite_parallel", 1)) for r in rows})
    busy = sorted({f"{r.name} seed {r.seed}" for r in rows
                   if r.load_avg_start is not None and r.load_avg_start > (r.environment.get("cores") or 1)})
    torch_v = sorted({str(r.environment.get("torch", "?")) for r in rows})
    # a row without a recorded sampler was archived before peftlab.backbones.dropout (torch's bernoulli_
    # masks) or trained no dropout module (the linear probe's cached features)
    samplers = Counter(str(r.environment.get("dropout", "unrecorded")).split(" (")[0] for r in rows)
    return ("hardware: " + "; ".join(f"{k}: {n} row(s)" for k, n in cpus.items())
            + f", {'/'.join(threads)} torch thread(s) per row, "
            + ("one row at a time" if at_once == [1] else f"{'/'.join(map(str, at_once))} rows at once (--parallel)")
            + f", torch {', '.join(torch_v)}"
            + ", dropout masks: " + ", ".join(f"{SAMPLER_NAMES.get(k, k)} {n} row(s)" for k, n in sorted(samplers.items()))
            + (" (the same dropout, another random stream; the 32-bit sampler trains LoRA-family rows faster, so "
               "their train s are not comparable across samplers)" if "bits" in samplers and len(samplers) > 1 else "")
            + (f"; started with the load above the cores (timings slowed by other jobs): {', '.join(busy)}" if busy else ""))


def fallback_text(views: list[BenchView]) -> str:
    """Which methods train at their default on which benchmark ("every method" when all of them)."""
    return "; ".join(f"{v.bench.title}: " + ("every method" if set(v.planned) <= set(v.at_default)
                                             else ", ".join(v.at_default)) for v in views if v.at_default)


def render(views: list[BenchView], command: str, hardware: str, search: bool, quick: bool) -> str:
    planned = sum(len(v.planned) * len(v.seeds) for v in views)
    done = sum(len(v.done()) for v in views)
    measured = [r for v in views for r in v.results if r.status == "ok"]
    sizes = "; ".join(f"{v.bench.title} {v.n_train} train / {v.n_eval} eval" for v in views)
    lines = [
        SECTION, "",
        ("**Smoke run (`--quick`): the numbers mean nothing.** " if quick else "")
        + f"MiniLM-L6 ({BACKBONE}) on {sizes} (seeded stratified subsamples of ../shared/data, the same for every "
        f"seed), every text method of {SOURCES} with its own hyperparameters and that config's train block, "
        + ("the learning rate of each method its best value on that benchmark in the documented per-method search "
           "of bench/method_defaults.py (section \"Per-method default learning rates\": half-decade values, "
           "100-step trials on 90% of this training subsample scored by the loss on the other 10%, never on the "
           "evaluation split), chosen once per method and benchmark so the seeds vary training only; where a "
           f"benchmark's best trial stayed above {1 - INFORMATIVE_MARGIN:g} of chance loss the method trains at its "
           "default (its SST-2 pick) instead (" + (fallback_text(views) or "no method here") + "; "
           "100-step MultiNLI trials barely learn, and the best of them, LoRA at 3.16e-3, collapsed a full-length row)"
           if search else "no learning-rate search (each method's configured lr)")
        + f", seeds {', '.join(map(str, views[0].seeds)) if views else '-'}; {precision_text(measured)}.",
        f"Command: `{command}` (re-running it continues where it stopped); {hardware_text(measured, hardware)}.",
        "",
        f"**Progress: {done} of {planned} planned rows (method x seed) done.**"
        + (" Every planned row is measured." if done == planned else " The tables show what is measured; remaining:"),
    ]
    rest = remaining_text(views)
    if rest:
        lines += ["", rest]
    for v in views:
        lines += ["", f"### {v.bench.title}", "", *bench_table(v)]
    lines += ["", "accuracy and macro-F1: mean ± sample std over the finished seeds; trainable %: of all parameters; "
              "train s: mean training time per seed (evaluation excluded); search s: the method's lr search on this "
              "benchmark (once, for all seeds); peak MB: the highest peak memory over seeds (process RSS on CPU); "
              "lr: the learning rate trained with ((default): this benchmark's trials stayed within "
              f"{INFORMATIVE_MARGIN:g} of chance loss, so the method's default); vs best: peftlab's "
              "multi-seed verdict, n.s. = within the spread of the best (|difference| < std_a + std_b).", "",
              "#### Ordering against the published results", "",
              f"Published (as quoted in issue 19): {PUBLISHED}. Those are larger models and other tasks; what carries "
              "over is the ordering, checked here from the measured means:", ""]
    lines += [f"- {ordering(v)}" for v in views]
    return "\n".join(lines) + "\n"


# --- running -----------------------------------------------------------------------------------------

def write_data(bench: Bench, n_train: int, n_eval: int, files: tuple[Path, Path]) -> None:
    """peftlab's seeded stratified subsample of the benchmark, as JSONL files (rewritten only if changed)."""
    from peftlab.tasks import load_task

    task = TaskConfig.model_validate({
        "source": "jsonl", "name": bench.key, "train_file": str(bench.folder / bench.train_file),
        "eval_file": str(bench.folder / bench.eval_file), "text_column": bench.text_column,
        **({"text_pair_column": bench.pair_column} if bench.pair_column else {}), "label_column": "label",
        "label_names": list(bench.labels), "n_train": n_train, "n_eval": n_eval})
    data = load_task(task, DATA_SEED)
    for path, split in zip(files, (data.train, data.eval)):
        text = subsample_lines(split.texts, split.pairs, split.labels.tolist(), bench)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)


def run_rows(bench: Bench, cfg: ExperimentConfig, todo: list[tuple[int, MethodParams]], sizes: tuple[int, int],
             parallel: int, quiet: bool = True, archive: Path = ARCHIVE) -> None:
    """Each (seed, method) row as its own ``python -m peftlab run`` (peftlab's real path; its resume
    continues a killed row from its newest checkpoint), ``parallel`` at once with the cores shared
    out (OMP_NUM_THREADS); each row finished ok is archived in the repository as soon as it ends."""
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if parallel > 1 else {})}

    def one(item: tuple[int, MethodParams]) -> None:
        seed, params = item
        rcfg = row_config(cfg, seed, params)
        path = Path(cfg.output_dir).parent / "configs" / f"seed-{seed}" / f"{params.label}.yaml"
        text = dump_config(rcfg)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
        t0 = time.perf_counter()
        log = Path(cfg.output_dir).parent / "logs" / f"seed-{seed}-{params.label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as sink:  # the row's own table and warnings, kept beside it
            proc = subprocess.run([sys.executable, "-m", "peftlab", "run", str(path), *([] if not quiet else ["-q"])],
                                  env=env, check=False, stdout=sink, stderr=subprocess.STDOUT)
        result = row_result(Path(rcfg.output_dir) / params.label, params)
        ok = result is not None and result.status == "ok"
        if ok:
            archive_row(bench, rcfg, result, archive, parallel)
            base = Path(rcfg.output_dir) / BASELINE / RESULTS_FILE
            keep = baseline_path(bench, *sizes, archive)
            if base.is_file() and not keep.is_file():
                atomic_write_text(keep, base.read_text(encoding="utf-8"))
        print(f"   {bench.key} seed {seed} {params.label}: {'ok' if ok else f'not finished (exit {proc.returncode})'}"
              f" in {time.perf_counter() - t0:.0f} s (log: {log})", flush=True)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, todo))


def baseline_path(bench: Bench, n_train: int, n_eval: int, archive: Path = ARCHIVE) -> Path:
    """The majority-class row of a subsample (it depends on the data alone)."""
    return archive / bench.key / f"baseline-{n_train}-{n_eval}.json"


def canonical_command(args: argparse.Namespace) -> str:
    """The command that reproduces the section (without --parallel / --render-only: they change nothing)."""
    out = ["python", "bench/method_suite.py"]
    if args.quick:
        out.append("--quick")
    out += ["--benchmarks", args.benchmarks, "--n-train", str(args.n_train), "--seeds", args.seeds]
    if args.n_eval is not None:
        out += ["--n-eval", str(args.n_eval)]
    if args.methods:
        out += ["--methods", args.methods]
    return shlex.join(out)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmarks", default="sst2,mnli")
    ap.add_argument("--n-train", type=int, default=None, help="training examples per benchmark (default 8000)")
    ap.add_argument("--n-eval", type=int, default=None, help="default: all 872 of SST-2, 2000 of MultiNLI")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2)")
    ap.add_argument("--methods", default=None, help=f"comma-separated row names of {SOURCES} (default: all)")
    ap.add_argument("--parallel", type=int, default=1, help="methods at once (peftlab run --parallel)")
    ap.add_argument("--precision", choices=["probe", "fp32", "bf16"], default=_USER_PRECISION or "probe",
                    help="what peftlab's auto precision means on a CPU (PEFTLAB_CPU_PRECISION; default: peftlab's probe)")
    ap.add_argument("--verbose", action="store_true", help="peftlab's own progress (searches, resumes, bars) on stderr")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    args.n_train = args.n_train or (QUICK["n_train"] if args.quick else 8000)
    args.n_eval = args.n_eval or (QUICK["n_eval"] if args.quick else None)
    args.seeds = args.seeds or (QUICK["seeds"] if args.quick else "0,1,2")
    args.methods = args.methods or (QUICK["methods"] if args.quick else None)
    unknown = [b for b in args.benchmarks.split(",") if b not in BENCHES]
    if unknown or args.parallel < 1:
        ap.error(f"--benchmarks: known {', '.join(BENCHES)}" if unknown else "--parallel: 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.chdir(benchkit.ROOT)  # the configs' paths are relative to the repository root
    os.environ["PEFTLAB_CPU_PRECISION"] = args.precision
    benches = [BENCHES[b] for b in args.benchmarks.split(",")]
    if not args.render_only:
        missing = [b for b in benches if not b.present()]
        for b in missing:
            print(f"skip {b.key}: {b.folder} lacks {b.train_file} / {b.eval_file} (benchmark data is optional)")
        benches = [b for b in benches if b not in missing]
        if not benches:
            return 0
    source = load_source()
    methods = pick_methods(text_methods(source["methods"]), args.methods.split(",") if args.methods else None)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = run_root(args.quick)
    archive = root / "archive" if args.quick else ARCHIVE  # a smoke run never touches the committed archive
    cfgs: dict[str, tuple[ExperimentConfig, int]] = {}
    fallbacks: dict[str, list[str]] = {}
    unsearched: dict[str, list[str]] = {}
    for b in benches:
        n_eval = args.n_eval or b.n_eval
        path = root / b.key / "config.yaml"
        lrs, fallbacks[b.key], unsearched[b.key] = (None, [], []) if args.quick else searched_lrs(
            b, methods, searched(b), searched(BENCHES[PICK_BENCH]))
        for label in unsearched[b.key]:
            print(f"skip {b.key} {label}: no searched learning rate yet; run "
                  f"python bench/method_defaults.py --benchmarks {b.key} --methods {label}")
        raw = suite_config(b, source, methods, seeds, root, args.n_train, n_eval, lrs=lrs,
                           epochs=1 if args.quick else None)
        if not args.render_only:
            write_data(b, args.n_train, n_eval, data_files(root, b, args.n_train, n_eval))
            text = yaml.safe_dump(raw, sort_keys=False)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                atomic_write_text(path, text)
        cfgs[b.key] = (validate_raw(raw), n_eval)
    if not args.render_only:
        for seed in seeds:  # seed 0 everywhere first: a partial run has whole single-seed tables
            for b in benches:
                cfg, n_eval = cfgs[b.key]
                done = load_view(b, cfg, args.n_train, n_eval, archive=archive).done()
                todo = [(seed, p) for p in cfg.methods
                        if (seed, p.label) not in done and p.label not in unsearched[b.key]]
                print(f"== {b.key} seed {seed}: {len(todo)} of {len(cfg.methods)} methods to run",
                      flush=True)
                if todo:
                    run_rows(b, cfg, todo, (args.n_train, n_eval), args.parallel, quiet=not args.verbose,
                             archive=archive)
    views = [load_view(b, cfg, args.n_train, n_eval, search_costs(searched(b)) if not args.quick else {},
                       archive)
             for b, (cfg, n_eval) in zip(benches, cfgs.values())]
    for v in views:
        v.at_default = fallbacks.get(v.bench.key, [])
        v.unsearched = unsearched.get(v.bench.key, [])
    if not args.render_only:
        for v, (cfg, _) in zip(views, cfgs.values()):
            summary(v, Path(cfg.output_dir))
    body = render(views, canonical_command(args), benchkit.hardware(), not args.quick, args.quick)
    benchkit.write_section(SECTION, body, benchkit.ROOT / ("BENCHMARKS.quick.md" if args.quick else "BENCHMARKS.md"))
    left = sum(len(v.remaining()) for v in views)
    print(f"{'all planned rows done' if not left else f'{left} planned row(s) not done yet: re-run the same command'}")
    return 0


def summary(view: BenchView, out: Path) -> None:
    """comparison.md/csv in the run folder over every finished seed: peftlab's own multi-seed table
    (mean ± std, n.s.), as its multi-seed runner writes it."""
    from peftlab.report.compare import write_comparison

    if view.results:
        write_comparison(([view.baseline] if view.baseline else []) + view.results, out)


if __name__ == "__main__":
    raise SystemExit(main())
