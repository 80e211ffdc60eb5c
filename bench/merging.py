"""Merging three tasks' LoRAs into one encoder: peftlab compose's combines vs peft's add_weighted_adapter.

Usage: python bench/merging.py [--threads 1] [--quick]

What it measures (issue 23). One LoRA per offline task (drug reviews, BBC News, Rotten Tomatoes:
MiniLM-L6, the same r / alpha / targets), each trained by ``peftlab run`` on a modest subsample
(a re-run keeps the finished runs: peftlab's own resume). The three LoRAs are merged into one
adapter, ``drugreview + bbcnews + rotten_tomatoes``, with every ``peftlab compose --mode weight
--combine`` (linear = the exact sum of the updates, ties, dare_linear, dare_ties, magnitude_prune)
and, as a peer, peft's ``add_weighted_adapter`` with the same adapters, weights (1 each),
combination types and densities. Each density combine is tried at ``DENSITIES``; the density is
chosen per combine on a held-out part of the *training* data of the three tasks (examples the
LoRAs never saw; the eval splits choose nothing), and the chosen merge is scored on each task's
eval split with the merged encoder and that task's own head (pooler + classifier of its LoRA).
Bounds: each LoRA on its own task (upper) and the base encoder with the task's head (lower).

Every row is scored the same way: its update dW of each adapted linear is added to the base
weights (peftlab: of the composed adapter as saved; peft: ``get_delta_weight`` of the merged
adapter) and the task's head is loaded. For peft's ``linear`` the relative error of its update
against the exact sum of the three updates is printed (peft adds the A's and the B's separately:
cross terms B_i A_j).

The full run takes about 20 minutes on one thread (training ~6, merging and scoring ~12; more on a
busy machine).
``--quick``: 48 training / 24 validation / 30 eval examples per task, one epoch, into
runs/merging_quick and BENCHMARKS.quick.md (a smoke run of this script, never the real section).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit  # noqa: E402  (this checkout's peftlab on sys.path; PEFTLAB_CPU_PRECISION=fp32)

SECTION = "## Merging"
BACKBONE = "minilm-l6"
#: every task's LoRA (configs/drugreview.yaml's LoRA row: every linear of the blocks, plus the head)
LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1,
        "target_modules": ["query", "key", "value", "dense"], "lr": 3.0e-3}
TRAIN = {"epochs": 3, "batch_size": 16, "seed": 0, "drift": False, "eval_every_epoch": False}  # eval once, at the end
COMBINES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
DENSITIES = (0.2, 0.5, 0.8)
SEED = 0  # DARE's drops (both implementations)
WEIGHT = 1.0  # every task vector's coefficient (peftlab's expression and peft's weights)


@dataclass(frozen=True)
class TaskSize:
    name: str  # a builtin task (peftlab.tasks.builtin) and the adapter's name in the expression
    n_train: int
    n_val: int  # held out of the training split (never trained on): chooses the density
    n_eval: int | None  # stratified subsample of the eval split (None: all of it)
    max_length: int


FULL = (TaskSize("drugreview", 400, 100, None, 128),  # 600 train / 378 test reviews
        TaskSize("bbcnews", 400, 150, None, 128),  # ~1,780 train / 413 test articles
        TaskSize("rotten_tomatoes", 1000, 200, 600, 96))  # 10,230 train / 2,522 test snippets
QUICK = tuple(TaskSize(t.name, 48, 24, 30, 64) for t in FULL)


# ---- pure logic --------------------------------------------------------------------------------

def best_density(val: dict[float, list[tuple[float, float]]]) -> float:
    """The density whose merge scores best on validation: highest mean accuracy over the tasks,
    then mean macro-F1; an exact tie goes to the smallest density (the sparser merge).

    ``val``: density -> one (accuracy, macro-F1) per task.
    """
    def key(d: float) -> tuple[float, float, float]:
        scores = val[d]
        return (sum(a for a, _ in scores) / len(scores), sum(f for _, f in scores) / len(scores), -d)

    return max(val, key=key)


def held_out(train_texts: list[str], fitted: set[str]) -> list[int]:
    """Indices of the training split whose text the LoRA never trained on (a text that occurs
    both inside and outside the fitted subsample counts as seen)."""
    return [i for i, t in enumerate(train_texts) if t not in fitted]


def normalised(accs: dict[str, float], upper: dict[str, float]) -> float:
    """Mean over tasks of accuracy / the task's own LoRA's accuracy (the merging papers' measure)."""
    return sum(accs[t] / upper[t] for t in upper) / len(upper)


def relative_error(got: dict[str, Any], want: dict[str, Any]) -> tuple[float, float]:
    """(||got - want|| / ||want|| over all modules together, worst single module), Frobenius."""
    num = den = 0.0
    worst = 0.0
    for k, w in want.items():
        d = float((got[k].double() - w.double()).norm()) ** 2
        n = float(w.double().norm()) ** 2
        num, den = num + d, den + n
        worst = max(worst, (d / n) ** 0.5 if n else 0.0)
    return (num / den) ** 0.5 if den else 0.0, worst


def norm_ratio(got: dict[str, Any], want: dict[str, Any]) -> float:
    """||got|| / ||want|| over all modules together (how much of the summed update a merge keeps)."""
    g = sum(float(v.double().norm()) ** 2 for v in got.values())
    w = sum(float(v.double().norm()) ** 2 for v in want.values())
    return (g / w) ** 0.5 if w else 0.0


# ---- training: one ordinary peftlab run per task -----------------------------------------------

def run_config(t: TaskSize, root: Path, threads: int, quick: bool) -> dict[str, Any]:
    return {
        "name": f"merging_{t.name}", "backbone": BACKBONE, "baseline": False,
        "task": {"source": "builtin", "name": t.name, "n_train": t.n_train,
                 **({"n_eval": t.n_eval} if t.n_eval else {})},
        "methods": [LORA],
        "train": {**TRAIN, **({"epochs": 1} if quick else {}), "max_length": t.max_length, "num_threads": threads},
        "output_dir": str(root / t.name),
    }


def train(sizes: tuple[TaskSize, ...], root: Path, threads: int, quick: bool) -> list[str]:
    """Write each task's config and run ``peftlab run`` on it (finished runs are kept); returns
    the commands. Exits on a failed run."""
    import yaml

    commands = []
    env = {**os.environ, "PYTHONPATH": str(benchkit.ROOT)}
    for t in sizes:
        cfg = root / "configs" / f"{t.name}.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(run_config(t, root, threads, quick), sort_keys=False)
        if not cfg.is_file() or cfg.read_text(encoding="utf-8") != text:
            cfg.write_text(text, encoding="utf-8")
        cmd = ["run", str(cfg), "-q"]
        commands.append("peftlab " + shlex.join(cmd))
        print(f"== {commands[-1]}", file=sys.stderr, flush=True)
        code = subprocess.run([sys.executable, "-m", "peftlab", *cmd], cwd=benchkit.ROOT, env=env,
                              stdout=subprocess.DEVNULL).returncode
        if code != 0:
            raise SystemExit(f"peftlab run {cfg} failed (exit {code}); section not written")
    return commands


# ---- scoring: base weights + a row's dW + the task's head --------------------------------------

@dataclass
class Scored:
    accuracy: float
    macro_f1: float


class TaskScorer:
    """One task's base classifier (its label count), tokenised validation and eval splits, and
    its LoRA's head; ``score(deltas, split)`` restores the base, adds ``deltas``, loads the head."""

    def __init__(self, t: TaskSize, run_dir: Path):
        import torch
        from transformers import DataCollatorWithPadding

        from peftlab.backbones.loaders import load_classifier, load_tokenizer
        from peftlab.compose.adapter import head_tensors
        from peftlab.compose.core import load_pool
        from peftlab.config import BackboneConfig, load_config
        from peftlab.runners.batching import encode
        from peftlab.tasks import load_task
        from peftlab.tasks.sampling import stratified_indices

        self.task = t
        cfg = load_config(run_dir / t.name / "config.yaml")
        fitted = load_task(cfg.task, cfg.train.seed)  # exactly what the run trained and evaluated on
        full = load_task(cfg.task.model_copy(update={"n_train": None}), cfg.train.seed).train
        rest = held_out(full.texts, set(fitted.train.texts))
        pool = full.take(rest)
        val = pool.take(stratified_indices(pool.labels, t.n_val, cfg.train.seed))
        self.labels = fitted.label_names
        self.n_train, self.n_val, self.n_eval = len(fitted.train), len(val), len(fitted.eval)
        backbone = BackboneConfig(name=BACKBONE)
        self.tok = load_tokenizer(backbone)
        self.model = load_classifier(backbone, self.labels, self.tok).eval()
        self.base = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.feats = {"val": encode(self.tok, val, t.max_length), "eval": encode(self.tok, fitted.eval, t.max_length)}
        self.gold = {"val": val.labels, "eval": fitted.eval.labels}
        self.collate = DataCollatorWithPadding(self.tok)
        self.adapter = load_pool({t.name: str(run_dir / t.name / "lora")})[t.name]
        self.head = {k.removeprefix("base_model.model."): v for k, v in head_tensors(self.adapter).items()}
        missing = set(self.head) - set(self.base)
        assert not missing, f"head tensors with no place in the base model: {sorted(missing)}"
        self.result = json.loads((run_dir / t.name / "lora" / "results.json").read_text(encoding="utf-8"))
        self.torch = torch

    def score(self, deltas: dict[str, Any], split: str) -> Scored:
        from peftlab.results.metrics import classification_metrics
        from peftlab.runners.train import predict_logits

        torch = self.torch
        with torch.no_grad():
            self.model.load_state_dict(self.base)
            params = dict(self.model.named_parameters())
            for path, d in deltas.items():
                params[f"{path}.weight"].add_(d.to(torch.float32))
            for k, v in self.head.items():
                params[k].copy_(v)
        logits = predict_logits(self.model, self.feats[split], self.collate, 64, torch.device("cpu"))
        m = classification_metrics(self.gold[split], logits.argmax(-1), self.labels)
        return Scored(float(m["accuracy"]), float(m["macro_f1"]))


def lora_deltas(ad: Any) -> dict[str, Any]:
    """{module path in the classifier: s B A} of a (composed or trained) LoRA adapter, float64."""
    from peftlab.methods.lora import lora_delta, lora_modules

    return {p.removeprefix("base_model.model."): lora_delta(ad, p) for p in lora_modules(ad)}


# ---- the two implementations -------------------------------------------------------------------

def peftlab_merge(pool: dict[str, Any], combine: str, density: float | None) -> dict[str, Any]:
    from peftlab.compose.core import compose
    from peftlab.compose.merge import MergeSpec, RANDOM_COMBINES

    expr = " + ".join(f"{WEIGHT:g}*{n}" for n in pool)
    spec = MergeSpec(combine, density, SEED if combine in RANDOM_COMBINES else None)
    composed, _ = compose(expr, pool, mode="weight", head="first", merge=spec)
    return lora_deltas(composed)


class PeftMerger:
    """peft's ``add_weighted_adapter`` on head-less copies of the LoRAs (peft refuses to combine
    adapters that each save a head: ``modules_to_save``); dW read back with ``get_delta_weight``."""

    def __init__(self, pool: dict[str, Any], work: Path):
        import torch
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from safetensors.torch import save_file

        from peftlab.backbones.loaders import load_classifier, load_tokenizer
        from peftlab.compose.adapter import CONFIG_FILE, WEIGHTS_FILE, is_head_key
        from peftlab.config import BackboneConfig

        backbone = BackboneConfig(name=BACKBONE)
        base = load_classifier(backbone, ["a", "b"], load_tokenizer(backbone))  # heads unused: dW only
        self.names = list(pool)
        self.model = None
        for name, ad in pool.items():
            d = work / name
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            # without modules_to_save, the target "dense" would also match BERT's pooler (a head
            # module): exclude the head modules, or peft puts a fresh LoRA on the pooler
            head = sorted(set(ad.config.get("modules_to_save") or []))
            conf = {**ad.config, "modules_to_save": None, "task_type": None, "exclude_modules": head or None}
            (d / CONFIG_FILE).write_text(json.dumps(conf), encoding="utf-8")
            save_file({k: v.contiguous() for k, v in ad.tensors.items() if not is_head_key(ad, k)}, str(d / WEIGHTS_FILE))
            if self.model is None:
                self.model = PeftModel.from_pretrained(base, str(d), adapter_name=name)
            else:
                self.model.load_adapter(str(d), adapter_name=name)
        self.layers = {n.removeprefix("base_model.model."): m for n, m in self.model.named_modules()
                       if isinstance(m, LoraLayer)}
        self.torch = torch

    def deltas(self, adapter: str) -> dict[str, Any]:
        with self.torch.no_grad():
            return {p: m.get_delta_weight(adapter).double() for p, m in self.layers.items()}

    def merge(self, combine: str, density: float | None) -> dict[str, Any]:
        self.torch.manual_seed(SEED)  # DARE's drops (peft draws from the global generator)
        kw = {} if density is None else {"density": density}
        self.model.add_weighted_adapter(self.names, [WEIGHT] * len(self.names), "merged", combination_type=combine, **kw)
        try:
            return self.deltas("merged")
        finally:
            self.model.delete_adapter("merged")


# ---- the benchmark -----------------------------------------------------------------------------

@dataclass
class Row:
    impl: str  # "peftlab" / "peft" / "" for the bounds
    label: str
    density: float | None = None
    val_mean: float | None = None
    merge_s: float | None = None
    kept: float | None = None  # ||dW|| / ||sum of the task dW||
    eval: dict[str, Scored] | None = None


def evaluate_merges(impl: str, merge, scorers: dict[str, TaskScorer], exact: dict[str, Any],
                    curves: dict[tuple[str, str], dict[float, float]]) -> list[Row]:
    """Every combine of one implementation: densities scored on validation, the best on eval."""
    rows = []
    for combine in COMBINES:
        val: dict[float, list[tuple[float, float]]] = {}
        kept: dict[float, tuple[dict[str, Any], float, float]] = {}
        for density in (DENSITIES if combine != "linear" else (None,)):
            c0 = time.process_time()
            deltas = merge(combine, density)
            merge_s = time.process_time() - c0
            scores = [scorers[t].score(deltas, "val") for t in scorers]
            key = density if density is not None else 1.0
            val[key] = [(s.accuracy, s.macro_f1) for s in scores]
            print(f"{impl} {combine} density={density}: validation accuracy "
                  + " ".join(f"{s.accuracy:.3f}" for s in scores), file=sys.stderr, flush=True)
            best = best_density(val)
            if best == key:
                kept = {key: (deltas, merge_s, norm_ratio(deltas, exact))}
            del deltas
        best = best_density(val)
        curves[(impl, combine)] = {d: sum(a for a, _ in v) / len(v) for d, v in val.items()}
        deltas, merge_s, ratio = kept[best]
        rows.append(Row(impl, combine, None if combine == "linear" else best, curves[(impl, combine)][best], merge_s,
                        ratio, {t: s.score(deltas, "eval") for t, s in scorers.items()}))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.chdir(benchkit.ROOT)
    sizes = QUICK if args.quick else FULL
    root = Path("runs") / ("merging_quick" if args.quick else "merging")
    t0, c0 = time.perf_counter(), os.times()
    commands = train(sizes, root, args.threads, args.quick)
    c1 = os.times()
    train_cpu = c1.children_user + c1.children_system - c0.children_user - c0.children_system

    import torch

    torch.set_num_threads(args.threads)
    from peftlab.compose.core import load_pool

    s0 = time.perf_counter()
    scorers = {t.name: TaskScorer(t, root) for t in sizes}
    pool = load_pool({t.name: str(root / t.name / "lora") for t in sizes})
    singles = {t: lora_deltas(ad) for t, ad in pool.items()}
    exact = {p: sum(d[p] for d in singles.values()) for p in next(iter(singles.values()))}

    def bound(label: str, deltas_of) -> Row:
        val = [s.score(deltas_of(t), "val").accuracy for t, s in scorers.items()]
        return Row("", label, val_mean=sum(val) / len(val),
                   eval={t: s.score(deltas_of(t), "eval") for t, s in scorers.items()})

    upper = bound("each task's own LoRA (upper bound)", lambda t: singles[t])
    lower = bound("base encoder + the task's head (lower bound)", lambda t: {})
    reproduced = {t: (upper.eval[t].accuracy, float(s.result["accuracy"])) for t, s in scorers.items()}

    curves: dict[tuple[str, str], dict[float, float]] = {}
    rows = evaluate_merges("peftlab", lambda c, d: peftlab_merge(pool, c, d), scorers, exact, curves)
    peft = PeftMerger(pool, root / "peft_inputs")
    same_inputs = max(relative_error(peft.deltas(t), singles[t])[1] for t in pool)
    cross = relative_error(peft.merge("linear", None), exact)
    ours = relative_error(peftlab_merge(pool, "linear", None), exact)
    rows += evaluate_merges("peft", peft.merge, scorers, exact, curves)
    score_cpu = time.process_time()
    wall = time.perf_counter() - t0

    body = render(sizes, scorers, upper, lower, rows, curves, reproduced, same_inputs, cross, ours, commands, args,
                  wall, train_cpu, score_cpu, time.perf_counter() - s0)
    out = benchkit.ROOT / ("BENCHMARKS.quick.md" if args.quick else "BENCHMARKS.md")
    benchkit.write_section(SECTION, body, out)
    return 0


# ---- the section -------------------------------------------------------------------------------

def render(sizes, scorers, upper: Row, lower: Row, rows: list[Row], curves, reproduced, same_inputs: float,
           cross: tuple[float, float], ours: tuple[float, float], commands: list[str], args, wall: float,
           train_cpu: float, score_cpu: float, score_wall: float) -> str:
    tasks = [t.name for t in sizes]
    up = {t: upper.eval[t].accuracy for t in tasks}
    data = "; ".join(f"{t.name} {scorers[t.name].n_train} / {scorers[t.name].n_val} / {scorers[t.name].n_eval} "
                     f"({len(scorers[t.name].labels)} classes, max_length {t.max_length})" for t in sizes)
    head = ["| row | density | val mean acc | " + " | ".join(f"{t} acc / F1" for t in tasks)
            + " | mean acc | normalised | ‖ΔW‖ / ‖Σ ΔW_i‖ | merge CPU s |",
            "|---|---|---|" + "---|" * len(tasks) + "---|---|---|---|"]

    def line(r: Row) -> str:
        name = f"{r.impl} {r.label}".strip()
        accs = {t: r.eval[t].accuracy for t in tasks}
        return (f"| {name} | {'' if r.density is None else f'{r.density:g}'} | "
                f"{'' if r.val_mean is None else f'{r.val_mean:.4f}'} | "
                + " | ".join(f"{r.eval[t].accuracy:.4f} / {r.eval[t].macro_f1:.4f}" for t in tasks)
                + f" | {sum(accs.values()) / len(accs):.4f} | {normalised(accs, up):.3f} | "
                f"{'' if r.kept is None else f'{r.kept:.3f}'} | {'' if r.merge_s is None else f'{r.merge_s:.1f}'} |")

    table = head + [line(upper), line(lower)] + [line(r) for r in rows]
    dens = list(DENSITIES)
    curve = ["| combine | " + " | ".join(f"peftlab d={d:g}" for d in dens) + " | " + " | ".join(f"peft d={d:g}" for d in dens) + " |",
             "|---|" + "---|" * (2 * len(dens))]
    for c in COMBINES:
        if c == "linear":
            continue
        cells = [f"{curves[(impl, c)][d]:.4f}" for impl in ("peftlab", "peft") for d in dens]
        curve.append(f"| {c} | " + " | ".join(cells) + " |")

    best_ours = max((r for r in rows if r.impl == "peftlab"), key=lambda r: normalised({t: r.eval[t].accuracy for t in tasks}, up))
    best_peft = max((r for r in rows if r.impl == "peft"), key=lambda r: normalised({t: r.eval[t].accuracy for t in tasks}, up))
    low = normalised({t: lower.eval[t].accuracy for t in tasks}, up)
    mismatch = [f"{t} {a:.4f} vs {b:.4f}" for t, (a, b) in reproduced.items() if abs(a - b) > 1e-9]
    cmd = shlex.join(["python", "bench/merging.py", *sys.argv[1:]])
    lines = [
        SECTION, "",
        *(["**Smoke run (`--quick`): tiny subsets and one epoch; the numbers mean nothing.**", ""] if args.quick else []),
        f"Three LoRAs, one per offline task, merged into one adapter for all three: MiniLM-L6 (`{BACKBONE}`), LoRA "
        f"r={LORA['r']} alpha={LORA['alpha']:g} dropout {LORA['dropout']} on {', '.join(LORA['target_modules'])} "
        f"(every linear of the blocks) plus the head (BERT's pooler and classifier), lr {LORA['lr']:g}, "
        f"{1 if args.quick else TRAIN['epochs']} epoch(s), batch {TRAIN['batch_size']}, seed {TRAIN['seed']}, fp32; "
        f"each trained by `peftlab run` ({'; '.join(f'`{c}`' for c in commands)}). Train / validation / eval "
        f"examples: {data}. Validation is held out of each task's training split (examples no LoRA trained on); "
        "eval is the task's eval split (test), stratified subsample where smaller than the split.",
        "",
        f"Merge: `{' + '.join(tasks)}` (weight {WEIGHT:g} each), peftlab `compose --mode weight --combine C "
        "[--density D]` (merges of the exact updates s B A; `linear` is their exact sum, task arithmetic) and, "
        f"as a peer, peft's `add_weighted_adapter(combination_type=C, density=D)` on the same three LoRAs "
        f"(copies without their heads: peft refuses to combine adapters that each save one), DARE seed {SEED}. "
        f"Densities {', '.join(f'{d:g}' for d in DENSITIES)}: the one with the highest mean validation accuracy over "
        "the three tasks (then macro-F1, then the smaller density) is chosen per combine and implementation; only "
        "its eval numbers are reported. Each task is scored with the merged encoder and that task's own head (the "
        "head of its LoRA); every row the same way (its dW added to the base weights). `normalised`: mean over "
        "tasks of accuracy / the task's own LoRA's accuracy. `‖ΔW‖ / ‖Σ ΔW_i‖`: size of the merged update "
        "against the exact sum, all modules together. `merge CPU s`: building the merged adapter and reading its "
        "dW back (peftlab stores a non-linear merge exactly by SVD of each update).",
        "",
        f"Command: `{cmd}`; hardware: {benchkit.hardware(args.threads)}; {wall / 60:.1f} min wall "
        f"(scoring and merging {score_wall / 60:.1f}), {(train_cpu + score_cpu) / 60:.0f} CPU-min "
        f"(training {train_cpu / 60:.1f}).",
        "", *table, "",
        "Mean validation accuracy per density (what chose the density):", "", *curve, "",
        f"peft's `linear` is not the sum of the updates: its dW is (Σ √s B_i)(Σ √s A_i), the sum plus the cross "
        f"terms B_i A_j; relative error against the exact Σ s B_i A_i: {cross[0]:.3f} over all modules, "
        f"{cross[1]:.3f} in the worst module (peftlab's linear: {ours[0]:.1e}). "
        f"peft's other non-SVD types merge the A's and the B's separately too (each with weight √(w s)), so they "
        f"are not TIES / DARE / pruning of the updates either. Same inputs: each LoRA as peft loaded it has dW within "
        f"{same_inputs:.1e} (relative) of peftlab's.",
        "",
        f"Best merge by normalised accuracy: peftlab {best_ours.label} "
        f"({normalised({t: best_ours.eval[t].accuracy for t in tasks}, up):.3f}), peft {best_peft.label} "
        f"({normalised({t: best_peft.eval[t].accuracy for t in tasks}, up):.3f}); the base encoder with the task "
        f"heads alone: {low:.3f}.",
        ("The single-LoRA rows reproduce each run's own eval accuracy (results.json), so merging dW into the "
         "base scores exactly what peft's unmerged adapter does." if not mismatch else
         "Single-LoRA rows differ from their runs' own eval accuracy (results.json): " + "; ".join(mismatch) + "."),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
