"""Fine-tuning throughput: peftlab vs the transformers Trainer, LoRA and full, MiniLM-L6 on MultiNLI.

Usage: python bench/train_throughput.py [--methods lora,full] [--n-train 640] [--n-eval 400]
       [--rounds 3] [--round-examples 640] [--threads 1] [--quick] [--no-write]

Three sides train the same model (minilm-l6) on the same MultiNLI pairs with the same
hyperparameters (lr, batch 32, warm-up 6%, weight decay 0.01, grad-norm 1, seed 0, one epoch,
LoRA r/alpha/dropout/targets of configs/drugreview.yaml):

* ``peftlab``: its real path (runners/experiment.py -> runners/train.py ``fit``);
* ``notebook``: Trainer + peft, ``padding="max_length", max_length=128`` (the common recipe);
* ``tuned``: Trainer + peft, dynamic padding (DataCollatorWithPadding) and
  ``train_sampling_strategy="group_by_length"``;
* for LoRA also ``peftlab_nodrop``: peftlab with LoRA dropout 0, a reference (not a peer: other
  hyperparameters) that shows what torch's per-element CPU dropout costs; and ``peftlab_full``:
  peftlab's full fine-tuning on the same pairs, for "a LoRA epoch no slower than a full one".

The machine is shared, so speed is measured in interleaved rounds: each round trains every side
on the same ``--round-examples`` pairs (order of sides rotated), median examples/s per side.
Full runs on ``--n-train`` pairs then give each side's accuracy on ``--n-eval`` validation pairs
(and their own examples/s). Useful FLOP/s (peftlab.estimate.flops, non-padding tokens) is divided by the
fp32 GEMM peak measured before, between and after the rounds (bench/utilisation.py).
``--quick``: 96 train / 48 eval pairs, 2 rounds of 32: a smoke run whose numbers mean nothing.
Writes runs/bench_throughput/<method>.json (``-quick.json`` for --quick) and, unless ``--no-write`` or ``--quick``, the
section "## Training throughput: <method> ..." of BENCHMARKS.md. Skips (exit 0) without
../shared/data/mnli.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's peftlab
from utilisation import gemm_peak, median  # noqa: E402

from peftlab.config import validate_raw  # noqa: E402
from peftlab.estimate.flops import LinearUse, linear_uses, training_flops  # noqa: E402
from peftlab.report.sections import replace_section  # noqa: E402
from peftlab.runners.experiment import run_experiment  # noqa: E402
from peftlab.tasks import load_task  # noqa: E402
from peftlab.tasks.base import Split  # noqa: E402
from transformers import TrainerCallback  # noqa: E402  (after peftlab: its import guards come first)

DATA = ROOT.parent / "shared" / "data" / "mnli"
LABELS = ["entailment", "neutral", "contradiction"]
HP = {"batch_size": 32, "max_length": 128, "seed": 0, "warmup_ratio": 0.06, "weight_decay": 0.01, "max_grad_norm": 1.0}
METHODS = {
    "lora": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"],
             "lr": 3e-3},
    "full": {"method": "full", "lr": 1e-4},
}
SIDES = ("peftlab", "notebook", "tuned")
# Reference sides, not peers, for LoRA: the same peftlab run with LoRA dropout 0 (other hyperparameters,
# so no target applies), which shows what the dropout in front of every adapted layer costs; and
# peftlab's full fine-tuning on the same pairs, for the target "a LoRA epoch no slower than a full
# fine-tuning epoch" measured in the same interleaved rounds.
REFERENCE = {"lora": ("peftlab_nodrop", "peftlab_full")}


def sides(method: str) -> tuple[str, ...]:
    return SIDES + REFERENCE.get(method, ())


def section(method: str, precision: str = "fp32") -> str:
    tail = ", bf16 autocast on both sides" if precision == "bf16" else ""
    return f"## Training throughput: {method} fine-tuning, peftlab vs transformers Trainer (MiniLM-L6, MultiNLI{tail})"


def use_precision(precision: str) -> None:
    """Every side of this run in ``precision`` on the CPU: peftlab's ``auto`` follows
    PEFTLAB_CPU_PRECISION; the Trainer sides get ``bf16=True`` from :func:`trainer_precision`."""
    os.environ["PEFTLAB_CPU_PRECISION"] = precision


def trainer_precision() -> dict[str, Any]:
    return {"bf16": True} if os.environ.get("PEFTLAB_CPU_PRECISION") == "bf16" else {}


def config(method: str, n_train: int, n_eval: int, out: Path, threads: int, backbone: str = "minilm-l6",
           data: Path = DATA, params: dict[str, Any] | None = None, device: str = "cpu", **override: Any) -> Any:
    """peftlab's config for one side: ``params`` replace METHODS[method], ``override`` some of their fields."""
    return validate_raw({
        "name": "bench_throughput", "backbone": backbone, "baseline": False, "output_dir": str(out),
        "task": {"source": "jsonl", "name": "mnli", "train_file": str(data / "train.jsonl.gz"),
                 "eval_file": str(data / "validation_matched.jsonl"), "text_column": "premise",
                 "text_pair_column": "hypothesis", "label_column": "label", "label_names": LABELS,
                 "n_train": n_train, "n_eval": n_eval},
        "methods": [{**(params or METHODS[method]), **override}],
        "train": {**HP, "epochs": 1, "num_threads": threads, "device": device, "checkpoints": False},
    })


# --- peftlab -----------------------------------------------------------------------------------

def run_peftlab(cfg: Any) -> dict[str, Any]:
    r = run_experiment(cfg, quiet=True, resume="fresh")[-1]
    assert r.status == "ok" and r.timing is not None, r.error
    return {"train_s": r.timing.train_s, "examples": r.n_train, "accuracy": r.accuracy,
            "dropout": r.environment.get("dropout")}  # peftlab.backbones.dropout's sampler, and why


# --- the transformers Trainer (notebook and tuned recipes) ---------------------------------------

def hf_model(method: str, backbone: str = "minilm-l6", lora: dict[str, Any] | None = None, head: str = "classifier",
             **load: Any) -> Any:
    """The Trainer side's model, as a transformers + peft user builds it: ``backbone`` (alias or
    folder) with a new head; LoRA (``lora``: r, alpha, dropout, target_modules; default
    METHODS["lora"]) on it for ``lora``/``qlora``, ``qlora`` after peft's k-bit preparation of a
    base quantised through ``load`` (quantization_config, device_map)."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForSequenceClassification, set_seed

    from peftlab.backbones.loaders import resolve
    from peftlab.estimate.params import arch_spec

    set_seed(HP["seed"])  # the same head initialisation as peftlab's (it seeds before loading)
    model = AutoModelForSequenceClassification.from_pretrained(resolve(backbone), num_labels=len(LABELS),
                                                               dtype=torch.float32, **load)
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if method in ("lora", "qlora"):
        m = lora or METHODS["lora"]
        # the same trained head as peftlab's: BERT's pooler with the classifier (arch_spec's head
        # modules); with the classifier alone the pooler would get a LoRA of its own ("dense")
        spec = arch_spec(model.config)
        heads = list(spec.head_modules) if spec is not None and head in spec.head_modules else [head]
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=m["r"], lora_alpha=m["alpha"],
                                                 lora_dropout=m["dropout"], target_modules=m["target_modules"],
                                                 modules_to_save=heads))
    return model


def hf_dataset(tok: Any, split: Split, padded: bool) -> Any:
    import datasets

    ds = datasets.Dataset.from_dict({"premise": split.texts, "hypothesis": split.pairs, "label": split.labels.tolist()})
    pad = {"padding": "max_length", "max_length": HP["max_length"]} if padded else {"max_length": HP["max_length"]}
    return ds.map(lambda b: tok(b["premise"], b["hypothesis"], truncation=True, **pad), batched=True,
                  remove_columns=["premise", "hypothesis"])


class Clock(TrainerCallback):
    """Times ``trainer.train()`` (with CUDA work finished at both ends)."""

    def on_train_begin(self, *a: Any, **k: Any) -> None:
        self._sync()
        self.t0 = time.perf_counter()

    def on_train_end(self, *a: Any, **k: Any) -> None:
        self._sync()
        self.s = time.perf_counter() - self.t0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def trainer_args(output_dir: str, lr: float, n_train: int, padded: bool, **extra: Any) -> Any:
    """TrainingArguments with this benchmark's hyperparameters (HP), one epoch over ``n_train``
    pairs; ``padded`` (the notebook recipe) drops group_by_length; ``extra``: device, precision."""
    from transformers import TrainingArguments

    steps = -(-n_train // HP["batch_size"])
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=HP["batch_size"], per_device_eval_batch_size=64,
        learning_rate=lr, num_train_epochs=1, warmup_steps=int(HP["warmup_ratio"] * steps),
        weight_decay=HP["weight_decay"], max_grad_norm=HP["max_grad_norm"], seed=HP["seed"],
        lr_scheduler_type="linear", save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, **({} if padded else {"train_sampling_strategy": "group_by_length"}), **extra)


def run_trainer(style: str, method: str, tok: Any, train: Split, evalset: Split | None) -> dict[str, Any]:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    padded = style == "notebook"
    with tempfile.TemporaryDirectory() as tmp:
        args = trainer_args(tmp, METHODS[method]["lr"], len(train), padded, use_cpu=True, **trainer_precision())
        clock = Clock()
        trainer = Trainer(model=hf_model(method), args=args, train_dataset=hf_dataset(tok, train, padded),
                          processing_class=tok, data_collator=DataCollatorWithPadding(tok), callbacks=[clock])
        trainer.train()
        acc = None
        if evalset is not None:
            # Not trainer.predict: with group_by_length the Trainer length-groups its evaluation sampler
            # too (transformers 5 Trainer._get_eval_sampler), so predictions come back in another order
            # than the dataset's labels. A Trainer with default arguments predicts in dataset order.
            in_order = Trainer(model=trainer.model, args=TrainingArguments(
                output_dir=tmp, per_device_eval_batch_size=64, report_to="none", disable_tqdm=True, use_cpu=True,
                **trainer_precision()),
                processing_class=tok, data_collator=DataCollatorWithPadding(tok))
            pred = in_order.predict(hf_dataset(tok, evalset, padded)).predictions
            acc = float((np.asarray(pred).argmax(-1) == evalset.labels).mean())
    return {"train_s": clock.s, "examples": len(train), "accuracy": acc, "eval_order": "dataset"}


# --- useful FLOPs --------------------------------------------------------------------------------

def useful_flops(method: str, tok: Any, split: Split, model: Any = None) -> tuple[int, list[LinearUse], int]:
    """Training FLOPs of one epoch over ``split`` (real tokens only), and the token count; ``model``:
    the one to observe (default: the Trainer side's MiniLM-L6 for ``method``)."""
    model = hf_model(method) if model is None else model
    enc = tok(split.texts, split.pairs, truncation=True, max_length=HP["max_length"])
    tokens = sum(len(x) for x in enc["input_ids"])
    sample = tok(split.texts[:2], split.pairs[:2], truncation=True, max_length=HP["max_length"], padding=True,
                 return_tensors="pt")
    uses = linear_uses(model, dict(sample))
    return training_flops(uses, tokens, len(split)), uses, tokens


# --- padding: why dynamic padding alone is not the whole story ---------------------------------------

def padding_table(tok: Any, sizes: list[int], threads: int) -> list[dict[str, Any]]:
    """Padded tokens per real token of each side's batches, for training sets of ``sizes`` pairs.

    The Trainer's group_by_length sorts inside mega-batches of ``min(n // (4 * batch), 50)``
    batches (transformers' ``get_length_grouped_indices``), so small sets are barely grouped;
    peftlab sorts inside 50 batches whatever the size. Pure bookkeeping, no training.
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from peftlab.runners.batching import LengthGroupedBatches, encode

    bs, rows = HP["batch_size"], []
    for n in sizes:
        cfg = config("lora", n, 32, ROOT / "runs" / "bench_throughput" / "padding", threads)
        lengths = encode(tok, load_task(cfg.task, cfg.train.seed).train, HP["max_length"]).lengths
        real = sum(lengths)
        ours = sum(max(lengths[i] for i in b) * len(b) for b in LengthGroupedBatches(lengths, bs, 0).batches(0))
        order = get_length_grouped_indices(lengths, bs, generator=torch.Generator().manual_seed(0))
        theirs = sum(max(lengths[i] for i in order[j:j + bs]) * len(order[j:j + bs]) for j in range(0, n, bs))
        rows.append({"n": n, "real": real, "peftlab": ours / real, "tuned": theirs / real,
                     "notebook": HP["max_length"] * n / real})
    return rows


# --- the benchmark --------------------------------------------------------------------------------

def side_runs(method: str, n: int, args: argparse.Namespace, tok: Any, out: Path) -> tuple[dict[str, Callable[[], dict[str, Any]]], Split]:
    """One training run per side on the same ``n`` pairs, and those pairs."""
    cfg = config(method, n, 32, out / "round", args.threads)
    split = load_task(cfg.task, cfg.train.seed).train
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "peftlab": lambda: run_peftlab(cfg),
        "notebook": lambda: run_trainer("notebook", method, tok, split, None),
        "tuned": lambda: run_trainer("tuned", method, tok, split, None),
    }
    if "peftlab_nodrop" in REFERENCE.get(method, ()):  # LoRA's dropout; full fine-tuning has no such parameter
        nodrop = config(method, n, 32, out / "round_nodrop", args.threads, dropout=0.0)
        runs["peftlab_nodrop"] = lambda: run_peftlab(nodrop)
    if "peftlab_full" in REFERENCE.get(method, ()):
        full = config("full", n, 32, out / "round_full", args.threads)
        runs["peftlab_full"] = lambda: run_peftlab(full)
    return runs, split


def timed_rounds(method: str, args: argparse.Namespace, tok: Any, out: Path) -> tuple[dict[str, list[float]], list[float], Split]:
    """Examples/s per side over ``args.rounds`` rounds (side order rotated), and the GEMM peaks seen.

    First every side trains once, untimed, on 64 pairs: a process's first training run pays one-time
    costs (allocator growth, kernel set-up; about half the speed of later runs here), which would
    otherwise fall on whichever side happens to run first."""
    warm, _ = side_runs(method, min(64, args.round_examples), args, tok, out)
    names = sides(method)
    for side in names:
        warm[side]()
    runs, split = side_runs(method, args.round_examples, args, tok, out)
    rates: dict[str, list[float]] = {s: [] for s in names}
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peaks = [gemm_peak(args.gemm_tokens, dtype=dtype)["peak"]]
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for side in order:
            res = runs[side]()
            rates[side].append(res["examples"] / res["train_s"])
        peaks.append(gemm_peak(args.gemm_tokens, dtype=dtype)["peak"])
        print(f"round {r + 1}: " + ", ".join(f"{s} {rates[s][-1]:.1f} ex/s" for s in names)
              + f"; GEMM peak {peaks[-1] / 1e9:.0f} GFLOP/s", flush=True)
    return rates, peaks, split


def full_runs(method: str, args: argparse.Namespace, tok: Any, out: Path) -> dict[str, dict[str, Any]]:
    cfg = config(method, args.n_train, args.n_eval, out / "full", args.threads)
    data = load_task(cfg.task, cfg.train.seed)
    res = {"peftlab": run_peftlab(cfg)}
    for style in ("notebook", "tuned"):
        res[style] = run_trainer(style, method, tok, data.train, data.eval)
    for side, r in res.items():
        print(f"full run {side}: accuracy {r['accuracy']:.4f}, {r['examples'] / r['train_s']:.1f} ex/s", flush=True)
    return res


def bench(method: str, args: argparse.Namespace, tok: Any) -> dict[str, Any]:
    out = ROOT / "runs" / "bench_throughput" / method
    rates, peaks, split = timed_rounds(method, args, tok, out)
    flops, uses, tokens = useful_flops(method, tok, split)
    # each side's useful FLOPs are its own method's (the full fine-tuning reference trains every weight)
    side_flops = {s: useful_flops("full", tok, split)[0] if s == "peftlab_full" else flops for s in rates}
    full = full_runs(method, args, tok, out)
    med = {s: median(v) for s, v in rates.items()}
    peak = median(peaks)
    return {
        "method": method, "rates": rates, "median_ex_s": med, "gemm_peaks": peaks, "gemm_peak_median": peak,
        "round_examples": len(split), "round_tokens": tokens, "round_flops": flops,
        "trainable_linear_params": sum(u.params for u in uses if u.trainable),
        "useful_flops_s": {s: side_flops[s] * med[s] / len(split) for s in med},
        "utilisation": {s: side_flops[s] * med[s] / len(split) / peak for s in med},
        "full": full, "args": vars(args), "dropout": full["peftlab"].get("dropout"),
    }


def hardware(threads: int) -> str:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os

    return (f"{cpu}, {os.cpu_count()} cores, {threads} torch thread(s); torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def render(r: dict[str, Any], cmd: str, hw: str) -> str:
    from train_report import render_section

    return render_section(r, section(r["method"], r.get("precision", "fp32")), cmd, hw)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--n-train", type=int, default=640)
    ap.add_argument("--n-eval", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-examples", type=int, default=640,
                    help="pairs per timed round (160 flatters peftlab: there the Trainer's group_by_length groups nothing)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every side (1: on a shared CPU, 2 threads ran ~10x slower here)")
    ap.add_argument("--gemm-tokens", type=int, default=1536, help="rows of the GEMM-peak products (~one batch's tokens)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="every side (and the GEMM peak) in this precision; bf16: autocast, for CPUs where it is faster")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the sections from runs/bench_throughput/<method>.json (adds the padding table)")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skip: {DATA} not found (benchmark data is optional)")
        return 0
    if args.quick:
        args.n_train, args.n_eval, args.rounds, args.round_examples = 96, 48, 2, 32
    torch.set_num_threads(args.threads)
    use_precision(args.precision)
    from peftlab.backbones.loaders import load_tokenizer
    from peftlab.config import BackboneConfig

    tok = load_tokenizer(BackboneConfig(name="minilm-l6"))
    cmd = "python bench/train_throughput.py " + " ".join(sys.argv[1:])
    hw = hardware(args.threads)
    for method in args.methods.split(","):
        tag = ("-bf16" if args.precision == "bf16" else "") + ("-quick" if args.quick else "")
        out = ROOT / "runs" / "bench_throughput" / f"{method}{tag}.json"
        if args.render_only:
            r = json.loads(out.read_text(encoding="utf-8"))
        else:
            load = os.getloadavg()[0]
            r = bench(method, args, tok)
            r["load_avg_start"] = load
            r["command"], r["hardware"], r["precision"] = cmd.strip(), hw, args.precision
            from peftlab.results import git_hash

            r["git"] = git_hash()
            out.write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
        if args.render_only or "padding" not in r:  # re-rendering recounts with the current batching
            sizes = sorted({r["round_examples"], r["args"]["n_train"]} | (set() if args.quick else {2000, 6400, 20000}))
            r["padding"] = padding_table(tok, sizes, args.threads)
            r["padding_command"] = cmd.strip()
            out.write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
        body = render(r, r["command"], r["hardware"])
        print(body)
        if not (args.quick or args.no_write):
            bench_md = ROOT / "BENCHMARKS.md"
            bench_md.write_text(replace_section(bench_md.read_text(encoding="utf-8"), section(method, r.get("precision", "fp32")), body),
                                encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
