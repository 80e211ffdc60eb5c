"""GPU benchmark: peftlab's CUDA path measured in one short run (issue 24, item 3).

Usage: python bench/gpu.py [--data-dir .gpudata] [--out runs/bench_gpu/gpu.json] [--rounds 3]
                           [--round-examples 1024] [--train-budget-s 150] [--only train,icl,...] [--tiny]
       python bench/gpu.py --render-only runs/bench_gpu/gpu.json    (writes BENCHMARKS.md "## GPU")
       python bench/gpu.py --prepare-data .gpudata                  (on a machine with the aliases)

Built to spend scarce GPU minutes on measuring: everything it needs travels in ``--data-dir``
(model configs and tokenizers of MiniLM-L6 and SmolLM2-135M, a slice of MultiNLI), models are
built there with random weights of the real shapes (speed and memory do not depend on the
values), and peftlab loads them from a local folder, so its real path (config -> run_experiment
-> fit) is what is timed. No network, no ``datasets``, no ``gguf``. Parts, each independent (a
failing part records its error in the JSON and the others go on; the JSON is rewritten after
every part and every round, so a killed run keeps what it measured):

* ``peak``: the bf16 matmul peak of this GPU (8192^3 and the models' own shapes), for utilisation;
* ``train``: full / LoRA / QLoRA 4-bit on both models, peftlab vs the transformers Trainer with
  the same settings (bf16 autocast, dynamic padding, group_by_length, bench/train_throughput.py's
  hyperparameters, same pairs), in interleaved rounds after an untimed warm-up of every side:
  examples/s, tokens/s, useful-FLOP utilisation (peftlab.estimate.flops), peak CUDA memory (max allocated
  above what was held before) and `peftlab plan`'s estimate (peftlab.estimate.plan.estimate_bytes, from the
  config alone, recorded by run_experiment);
* ``icl``: peftlab's in-context scorer (run_experiment, method icl, 0 and 4 shots) examples/s;
  lm-eval is not on the device machine and cannot be installed there (no network), so no ratio;
* ``latency``: LoRA merged (peftlab.runners.predict.merge_for_inference) vs unmerged vs base, batch 1
  and 32, fp32 and bf16 autocast.

``--tiny`` (automatic without CUDA): tiny models and sizes, for checking the script end to end on
a CPU in well under a minute; its numbers mean nothing and it never writes BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import benchkit  # noqa: F401  (this checkout's peftlab first on sys.path)
import torch
import train_throughput as tt
from utilisation import gemm_rate, median

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## GPU"
#: data-dir subfolder -> the peftlab alias whose config and tokenizer it holds
MODELS = {"minilm": "minilm-l6", "smollm2": "smollm2-135m"}
TITLES = {"minilm": "MiniLM-L6", "smollm2": "SmolLM2-135M"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "chat_template.jinja", "generation_config.json")
HEADS = {"bert": "classifier", "llama": "score"}
LORA_TARGETS = {"bert": ["query", "key", "value", "dense"],  # every linear layer, as bench/train_throughput.py
                "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
# SmolLM2 trains at a tenth of MiniLM's learning rates, as fine-tuning a 135M decoder usually does.
# (On the H200, 2026-12-04, peftlab's SmolLM2 loss went NaN at MiniLM's rates and at these alike,
# while the Trainer's on the same model and pairs did not: an open bug of peftlab's CUDA path.)
LR_SCALE = {"llama": 0.1}
TRAIN_METHODS = ("full", "lora", "qlora")
SIDES = ("peftlab", "trainer")
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
#: the issue's bars
SPEEDUP_BAR, PEAK_SHARE_BAR, QLORA_MEMORY_BAR, PLAN_TOLERANCE = 1.3, 0.40, 0.5, 0.25
LM_EVAL = "not measured: lm-eval is not installed on the device machine and cannot be (no network there)"
MB = 2**20


# --- preparing the data folder (on a machine with the aliases and ../shared) -----------------------

def prepare_data(out: Path, n_train: int = 2000, n_eval: int = 500) -> None:
    """Model configs + tokenizers (no weights) and the first MultiNLI pairs, into ``out``."""
    from peftlab.backbones.loaders import resolve

    for sub, alias in MODELS.items():
        src, dst = Path(resolve(alias)), out / sub
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", *TOKENIZER_FILES):
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
    (out / "mnli").mkdir(parents=True, exist_ok=True)
    with gzip.open(tt.DATA / "train.jsonl.gz", "rt", encoding="utf-8") as f, \
            gzip.open(out / "mnli" / "train.jsonl.gz", "wt", encoding="utf-8") as g:
        g.writelines(line for _, line in zip(range(n_train), f))
    with open(tt.DATA / "validation_matched.jsonl", encoding="utf-8") as f:
        (out / "mnli" / "validation_matched.jsonl").write_text("".join(line for _, line in zip(range(n_eval), f)),
                                                               encoding="utf-8")
    (out / "README.md").write_text(
        f"Data for bench/gpu.py (written by `python bench/gpu.py --prepare-data`): configs and tokenizers of "
        f"{', '.join(MODELS.values())} (no weights: the benchmark builds random weights of these shapes), and "
        f"the first {n_train} training / {n_eval} validation_matched pairs of ../shared/data/mnli.\n", encoding="utf-8")


def build_models(data_dir: Path, work: Path, tiny: bool, subs: tuple[str, ...] = tuple(MODELS)) -> dict[str, Path]:
    """A random-weight checkpoint of each model of ``subs`` (its real config; ``tiny``: shrunk) with its tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    out = {}
    for sub in subs:
        conf = AutoConfig.from_pretrained(str(data_dir / sub))
        if tiny:
            for k, v in TINY.items():
                setattr(conf, k, v)
            if conf.model_type == "llama":
                conf.num_key_value_heads, conf.head_dim = 2, TINY["hidden_size"] // TINY["num_attention_heads"]
        torch.manual_seed(0)
        model = (AutoModelForCausalLM if conf.model_type == "llama" else AutoModel).from_config(conf)
        folder = work / sub
        model.save_pretrained(str(folder))
        for name in TOKENIZER_FILES:
            if (data_dir / sub / name).is_file():
                shutil.copy2(data_dir / sub / name, folder / name)
        out[sub] = folder
        del model
    return out


# --- measuring ------------------------------------------------------------------------------------

def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def held() -> int:
    """CUDA bytes allocated now, after dropping what is unreachable (0 on CPU)."""
    gc.collect()
    if not cuda():
        return 0
    torch.cuda.empty_cache()
    return int(torch.cuda.memory_allocated())


def method_params(model_type: str, method: str) -> dict[str, Any]:
    """bench/train_throughput.py's hyperparameters; LoRA on every linear layer of the family."""
    scale = LR_SCALE.get(model_type, 1.0)
    if method == "full":
        return {**tt.METHODS["full"], "lr": tt.METHODS["full"]["lr"] * scale}
    lora = {**tt.METHODS["lora"], "target_modules": LORA_TARGETS[model_type], "lr": tt.METHODS["lora"]["lr"] * scale}
    return {**lora, "method": method}


def gemm_part(models: dict[str, Path], tiny: bool) -> dict[str, Any]:
    """Matmul FLOP/s (bf16 on CUDA, fp32 on CPU) at 8192^3 and at each model's own training shapes."""
    from transformers import AutoConfig

    dev, dtype = ("cuda", torch.bfloat16) if cuda() else ("cpu", torch.float32)
    rows = 256 if tiny else tt.HP["batch_size"] * 64  # about one batch's tokens
    shapes = {"square": (256,) * 3 if tiny else (8192,) * 3}
    for sub, folder in models.items():
        c = AutoConfig.from_pretrained(str(folder))
        h, f = c.hidden_size, c.intermediate_size
        shapes.update({f"{sub} {rows}x{h}x{h}": (rows, h, h), f"{sub} {rows}x{h}x{f}": (rows, h, f),
                       f"{sub} {rows}x{f}x{h}": (rows, f, h)})
    rates = {k: gemm_rate(*mkn, seconds=0.05 if tiny else 0.6, device=dev, dtype=dtype) for k, mkn in shapes.items()}
    return {"dtype": str(dtype).replace("torch.", ""), "rates": rates, "peak": max(rates.values())}


class TrainBench:
    """Every (model, method, side) training run of the ``train`` part, and what they measured."""

    def __init__(self, args: argparse.Namespace, models: dict[str, Path], work: Path) -> None:
        from peftlab.backbones.loaders import load_tokenizer
        from peftlab.config import BackboneConfig
        from peftlab.tasks import load_task

        self.args, self.models, self.work = args, models, work
        self.device = "cuda" if cuda() else "cpu"
        self.toks = {sub: load_tokenizer(BackboneConfig(name=str(f))) for sub, f in models.items()}
        self.cfgs: dict[tuple[str, str, int], Any] = {}
        self.splits = {n: load_task(self.config("minilm", "full", n).task, tt.HP["seed"]).train
                       for n in (args.warmup_examples, args.round_examples) if n}

    def model_type(self, sub: str) -> str:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(self.models[sub])).model_type

    def config(self, sub: str, method: str, n: int) -> Any:
        key = (sub, method, n)
        if key not in self.cfgs:
            self.cfgs[key] = tt.config(method, n, self.args.eval_examples, self.work / "runs" / sub / method,
                                       1 if self.device == "cpu" else None, backbone=str(self.models[sub]),
                                       data=self.args.data_dir / "mnli",
                                       params=method_params(self.model_type(sub), method), device=self.device)
        return self.cfgs[key]

    def peftlab(self, sub: str, method: str, n: int) -> dict[str, Any]:
        """peftlab's real path: run_experiment on the config, as `peftlab run` does."""
        from peftlab.runners.experiment import run_experiment

        before = held()
        r = run_experiment(self.config(sub, method, n), quiet=True, resume="fresh")[-1]
        if r.status != "ok" or r.timing is None:
            raise RuntimeError(f"peftlab {sub} {method}: {r.status}: {r.error}")
        return {"train_s": r.timing.train_s, "examples": r.n_train, "peak_bytes": (r.peak_memory_bytes or 0) - before,
                "train_loss": r.epochs[-1].train_loss if r.epochs else None,
                "held_before": before, "plan_bytes": r.details.get("memory_estimate_bytes"),
                "memory_kind": r.memory_kind}

    def hf_model(self, sub: str, method: str) -> Any:
        """The Trainer side's model (bench/train_throughput.hf_model), QLoRA with peftlab's 4-bit settings."""
        from peftlab.methods.qlora import Qlora, QloraParams

        from transformers import AutoConfig

        from peftlab.estimate.params import arch_spec

        mt = self.model_type(sub)
        params = method_params(mt, method)
        # every module the LoRA side trains whole (BERT: pooler and classifier, tt.hf_model's
        # modules_to_save) stays unquantised, as peftlab's load_classifier keeps its head modules
        spec = arch_spec(AutoConfig.from_pretrained(str(self.models[sub])))
        heads = tuple(spec.head_modules) if spec is not None else (HEADS[mt],)
        load = Qlora().load_kwargs(QloraParams(**params), heads) if method == "qlora" else {}
        model = tt.hf_model(method, str(self.models[sub]), params, HEADS[mt], **load)
        if model.config.pad_token_id is None:  # Llama has none; as peftlab's load_classifier does
            model.config.pad_token_id = self.toks[sub].pad_token_id
        return model

    def trainer(self, sub: str, method: str, n: int) -> dict[str, Any]:
        """transformers' Trainer, the tuned recipe of bench/train_throughput.py, on the same pairs."""
        from transformers import DataCollatorWithPadding, Trainer

        from peftlab.runners.batching import encode

        tok, split = self.toks[sub], self.splits[n]
        before = held()
        if cuda():
            torch.cuda.reset_peak_memory_stats()
        extra = {"bf16": True} if cuda() else {"use_cpu": True}
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:
            clock = tt.Clock()
            lr = method_params(self.model_type(sub), method)["lr"]
            # logging_nan_inf_filter off: the Trainer's default drops NaN/inf step losses from the
            # average it reports, which would hide a diverged run that peftlab stops and reports
            args = tt.trainer_args(tmp, lr, n, False, logging_nan_inf_filter=False, **extra)
            trainer = Trainer(model=self.hf_model(sub, method), args=args,
                              train_dataset=encode(tok, split, tt.HP["max_length"]), processing_class=tok,
                              data_collator=DataCollatorWithPadding(tok), callbacks=[clock])
            loss = trainer.train().training_loss
            peak = int(torch.cuda.max_memory_allocated()) - before if cuda() else None
            del trainer
        return {"train_s": clock.s, "examples": n, "peak_bytes": peak, "held_before": before, "train_loss": loss}

    def run(self, side: str, sub: str, method: str, n: int) -> dict[str, Any]:
        return (self.peftlab if side == "peftlab" else self.trainer)(sub, method, n)

    def flops(self, sub: str, method: str) -> dict[str, Any]:
        """Useful training FLOPs of one round (real tokens only). QLoRA does LoRA's arithmetic on a
        dequantised base, so its count is LoRA's (bitsandbytes' packed weights would count half)."""
        model = self.hf_model(sub, "lora" if method == "qlora" else method)
        flops, uses, tokens = tt.useful_flops(method, self.toks[sub], self.splits[self.args.round_examples], model)
        return {"flops": flops, "tokens": tokens, "trainable_linear_params": sum(u.params for u in uses if u.trainable)}


def train_part(bench: TrainBench, res: dict[str, Any], save: Callable[[], None], deadline: float) -> None:
    """Warm-up of every run once (untimed), then interleaved rounds until ``--rounds``, or until the
    next round (as long as the last) would end past ``deadline``; the first round always runs."""
    args = bench.args
    combos = [(sub, m) for sub in bench.models for m in args.methods]
    runs = [(side, sub, m) for sub, m in combos for side in SIDES]
    out = res.setdefault("train", {})
    for sub, m in combos:
        entry = out.setdefault(f"{sub}/{m}", {"model": sub, "method": m, "round_examples": args.round_examples,
                                              "rounds": {s: [] for s in SIDES}, "errors": {}})
        try:
            entry.update(bench.flops(sub, m))
        except Exception as exc:  # noqa: BLE001 - recorded, the runs go on
            entry["errors"]["flops"] = error_text(exc)
    for side, sub, m in runs if args.warmup_examples else []:
        try:
            bench.run(side, sub, m, args.warmup_examples)
        except Exception as exc:  # noqa: BLE001
            out[f"{sub}/{m}"]["errors"][f"warmup {side}"] = error_text(exc)
    last = 0.0
    for r in range(args.rounds):
        if r and time.perf_counter() + last > deadline:
            res.setdefault("notes", []).append(f"train: stopped after {r} round(s), the time budget was spent")
            break
        t = time.perf_counter()
        order = runs[r % len(runs):] + runs[:r % len(runs)]
        for side, sub, m in order:
            entry = out[f"{sub}/{m}"]
            if f"warmup {side}" in entry["errors"] and not entry["rounds"][side]:
                continue  # it failed once already: its time goes to the others
            try:
                entry["rounds"][side].append(bench.run(side, sub, m, args.round_examples))
            except Exception as exc:  # noqa: BLE001
                entry["errors"][f"round {r + 1} {side}"] = error_text(exc)
        last = time.perf_counter() - t
        print(f"train round {r + 1} ({last:.0f} s): " + ", ".join(
            f"{k} " + "/".join(f"{rate(e, s):.0f}" for s in SIDES) for k, e in out.items()) + " ex/s", flush=True)
        save()


def icl_part(models: dict[str, Path], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """peftlab's in-context scorer through run_experiment (method icl) on SmolLM2, as `peftlab run` does."""
    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    out: dict[str, Any] = {"lm_eval": LM_EVAL, "device": "cuda" if cuda() else "cpu"}
    for shots in (0, 4):
        task = {**tt.config("full", 300, args.icl_examples, work, 1, data=args.data_dir / "mnli").task.model_dump()}
        rates = []
        for n in (8, args.icl_examples, args.icl_examples):  # a warm-up, then two timed runs
            cfg = validate_raw({"name": "bench_gpu_icl", "backbone": str(models["smollm2"]), "baseline": False,
                                "output_dir": str(work / "icl"), "task": {**task, "n_eval": n},
                                "methods": [{"method": "icl", "shots": shots, "template": "nli", "chat": "off"}],
                                "train": {"device": "cuda" if cuda() else "cpu", "checkpoints": False}})
            r = run_experiment(cfg, quiet=True, resume="fresh")[-1]
            if r.status != "ok" or r.timing is None:
                raise RuntimeError(f"icl {shots} shots: {r.status}: {r.error}")
            rates.append(r.timing.eval_examples_per_s)
        out[f"{shots}-shot"] = {"examples": args.icl_examples, "ex_s": rates[1:], "median_ex_s": median(rates[1:]),
                                "batch_size": 8, "precision": getattr(r, "precision", None) or "fp32"}
    return out


def latency_part(models: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """Median ms per forward: base, LoRA merged (what `peftlab predict` serves), LoRA unmerged."""
    import inference_latency

    from peftlab.backbones.loaders import load_tokenizer
    from peftlab.config import BackboneConfig
    from peftlab.tasks import load_task

    dev = "cuda" if cuda() else "cpu"
    split = load_task(tt.config("full", 64, 32, Path("."), 1, data=args.data_dir / "mnli").task, 0).train
    out: dict[str, Any] = {}
    for sub, folder in models.items():
        ms = {k: m.to(dev) for k, m in inference_latency.models(8, str(folder)).items()}
        tok = load_tokenizer(BackboneConfig(name=str(folder)))
        for bs in (1, 32):
            batch = {k: v.to(dev) for k, v in tok(split.texts[:bs], split.pairs[:bs], padding=True, truncation=True,
                                                  max_length=tt.HP["max_length"], return_tensors="pt").items()}
            for precision in ("fp32", "bf16") if cuda() else ("fp32",):
                def call(m: torch.nn.Module) -> None:
                    with torch.autocast(dev, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        m(**batch)
                    sync()

                with torch.inference_mode():
                    got = benchkit.interleaved({k: (lambda m=m: call(m)) for k, m in ms.items()},
                                               args.latency_rounds if bs == 1 else max(3, args.latency_rounds // 4))
                out[f"{sub} b{bs} {precision}"] = {"tokens": int(batch["input_ids"].shape[1]),
                                                   **{k: median(v["wall"]) * 1e3 for k, v in got.items()}}
        del ms
        held()
    return out


def environment(tiny: bool) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    from peftlab.results import git_hash

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           # GPU_GIT: the commit measured (the device machine's copy of .git can be older than its tree)
           "tiny": tiny, "git": os.environ.get("GPU_GIT") or git_hash(), "hardware": benchkit.hardware()}
    env.update({p: version(p) for p in ("transformers", "peft", "accelerate", "bitsandbytes", "pydantic", "kernels",
                                        "huggingface_hub", "tokenizers")})
    if cuda():
        p = torch.cuda.get_device_properties(0)
        env.update({"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}"})
    return env


def error_text(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return (f"{type(exc).__name__}: {exc}".strip()[:600] + " | " + "".join(tb[-3:]).replace("\n", " ")[-600:])


# --- verdicts and rendering (pure: tests/test_bench_tools.py) ---------------------------------------

def rate(entry: dict[str, Any], side: str, key: str = "examples") -> float:
    """Median per-second rate of one side of a train entry (``key``: examples or tokens); nan if none."""
    rounds = entry.get("rounds", {}).get(side) or []
    if key == "tokens":
        n = entry.get("tokens")
        return median([n / r["train_s"] for r in rounds]) if n and rounds else float("nan")
    return median([r["examples"] / r["train_s"] for r in rounds]) if rounds else float("nan")


def measured_peak(entry: dict[str, Any], side: str = "peftlab") -> int | None:
    """The side's peak CUDA bytes above what was held before its run (the largest over its rounds)."""
    peaks = [r["peak_bytes"] for r in entry.get("rounds", {}).get(side) or [] if r.get("peak_bytes")]
    return max(peaks) if peaks else None


def verdict(value: float | None, bar: float, higher: bool = True) -> str:
    if value is None or value != value:
        return "not measured"
    return "met" if (value >= bar if higher else value <= bar) else "missed"


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's GPU targets, each with its measured value, bar and verdict."""
    train, rows = res.get("train", {}), []
    peak = (res.get("peak") or {}).get("peak")
    for method in ("lora", "full"):
        for sub in MODELS:
            e = train.get(f"{sub}/{method}", {})
            value = rate(e, "peftlab") / rate(e, "trainer") if e else None
            rows.append({"target": f"{method} on {TITLES[sub]}: peftlab / Trainer examples/s", "value": value,
                         "bar": f">= {SPEEDUP_BAR}x", "verdict": verdict(value, SPEEDUP_BAR), "fmt": "{:.2f}x"})
    e = train.get("smollm2/full", {})
    share = e["flops"] * rate(e, "peftlab") / e["round_examples"] / peak if e.get("flops") and peak and \
        e.get("round_examples") else None
    rows.append({"target": "full fine-tuning of SmolLM2-135M: useful FLOP/s / measured bf16 matmul peak",
                 "value": share, "bar": f">= {PEAK_SHARE_BAR:.0%}", "verdict": verdict(share, PEAK_SHARE_BAR),
                 "fmt": "{:.1%}"})
    q, lo = measured_peak(train.get("smollm2/qlora", {})), measured_peak(train.get("smollm2/lora", {}))
    ratio = q / lo if q and lo else None
    rows.append({"target": "QLoRA peak memory / LoRA's on SmolLM2-135M", "value": ratio,
                 "bar": f"<= {QLORA_MEMORY_BAR}x", "verdict": verdict(ratio, QLORA_MEMORY_BAR, higher=False),
                 "fmt": "{:.2f}x"})
    for key, e in train.items():
        p, plan = measured_peak(e), (e.get("rounds", {}).get("peftlab") or [{}])[0].get("plan_bytes")
        err = abs(plan / p - 1) if p and plan else None
        rows.append({"target": f"plan estimate vs measured peak, {TITLES.get(e['model'], e['model'])} {e['method']}",
                     "value": err, "bar": f"within {PLAN_TOLERANCE:.0%}",
                     "verdict": verdict(err, PLAN_TOLERANCE, higher=False), "fmt": "{:.0%} off"})
    return rows


def plan_now(model: str, method: str) -> int | None:
    """``peftlab plan``'s estimate for one training row as this code computes it (pure: the model's config and
    the row, no device): bf16 autocast on CUDA, batch and max_length of the training rounds. The run's own
    estimate (its ``plan_bytes``) came from the code of that run."""
    from peftlab.backbones.loaders import load_hf_config, resolve
    from peftlab.config import BackboneConfig
    from peftlab.estimate.activations import Step
    from peftlab.estimate.params import arch_spec
    from peftlab.estimate.plan import estimate_bytes
    from peftlab.methods import METHODS

    conf = load_hf_config(BackboneConfig(name=resolve(MODELS[model])), num_labels=3)
    params = METHODS.get(method).Params(**method_params(conf.model_type, method))
    return estimate_bytes(params, arch_spec(conf), conf, tt.HP["batch_size"], tt.HP["max_length"], 0, "cuda",
                          Step(device="cuda", autocast=True))


def plan_rows(res: dict[str, Any], estimate: Callable[[str, str], int | None] = plan_now) -> list[str]:
    """The plan estimate of this code against each measured peak (peftlab's and the Trainer's), as lines."""
    out = []
    for e in res.get("train", {}).values():
        try:
            now = estimate(e["model"], e["method"])
        except Exception as exc:  # an alias this machine cannot resolve: say so, the rest still renders
            out.append(f"- {TITLES.get(e['model'], e['model'])} {e['method']}: not computed ({type(exc).__name__})")
            continue
        errs = [f"{side} {mb(p)} MB ({now / p - 1:+.0%})" for side in SIDES
                if now and (p := measured_peak(e, side))]
        out.append(f"- {TITLES.get(e['model'], e['model'])} {e['method']}: plan {mb(now)} MB; measured "
                   f"{', '.join(errs) or 'no peak'}")
    return out


def fmt(row: dict[str, Any]) -> str:
    v = row["value"]
    return "-" if v is None or v != v else row["fmt"].format(v)


def mb(b: float | None) -> str:
    return "-" if not b else f"{b / MB:.0f}"


def render(res: dict[str, Any], estimate: Callable[[str, str], int | None] = plan_now) -> str:
    """The "## GPU" section of BENCHMARKS.md from a result JSON (``estimate``: today's plan of a row)."""
    env, peak = res.get("env", {}), (res.get("peak") or {}).get("peak")
    lines = [SECTION, "",
             f"peftlab's CUDA path on one GPU, measured by `bench/gpu.py` ({res.get('command', '').count('run ') or 1} "
             "device run(s), see Command; random weights of the real "
             "shapes: speed and memory do not depend on the values; MultiNLI pairs for realistic lengths). "
             f"Training: bench/train_throughput.py's hyperparameters (batch {tt.HP['batch_size']}, max_length "
             f"{tt.HP['max_length']}, one epoch of {res.get('args', {}).get('round_examples')} pairs per round), bf16 "
             "autocast on both sides, dynamic padding and length grouping on both; LoRA r=8 on every linear layer, "
             "QLoRA = that LoRA on an NF4 base with peftlab's defaults (double quantisation, fp32 compute) on both "
             "sides. Rounds interleaved after an untimed warm-up of every run; medians over the rounds (the "
             "table's last column: rounds per side).",
             f"Command: `{res.get('command', '')}`; device: {env.get('gpu', 'no GPU')} "
             f"({env.get('gpu_memory_gib', '?')} GiB, capability {env.get('capability', '?')}); torch {env.get('torch')} "
             f"(CUDA {env.get('cuda')}), transformers {env.get('transformers')}, peft {env.get('peft')}, "
             f"accelerate {env.get('accelerate')}, bitsandbytes {env.get('bitsandbytes')}; git {env.get('git')}.", "",
             "| target | measured | bar | verdict |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {fmt(t)} | {t['bar']} | **{t['verdict']}** |" for t in targets(res)]
    lines += ["", "| model | method | peftlab ex/s | Trainer ex/s | ratio | peftlab tokens/s | utilisation (peftlab) "
              "| peak MB peftlab | peak MB Trainer | plan MB | rounds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in res.get("train", {}).values():
        a, b = rate(e, "peftlab"), rate(e, "trainer")
        util = e["flops"] * a / e["round_examples"] / peak if e.get("flops") and peak and a == a else None
        plan = (e.get("rounds", {}).get("peftlab") or [{}])[0].get("plan_bytes")
        n = "/".join(str(len(e.get("rounds", {}).get(s) or [])) for s in SIDES)
        num = lambda v, f="{:.0f}": "-" if v != v else f.format(v)  # noqa: E731 - nan (no round) as "-"
        lines.append(f"| {TITLES.get(e['model'], e['model'])} | {e['method']} | {num(a)} | {num(b)} | "
                     f"{num(a / b, '{:.2f}x')} | "
                     f"{num(rate(e, 'peftlab', 'tokens'))} | {'-' if util is None else f'{util:.1%}'} | "
                     f"{mb(measured_peak(e))} | {mb(measured_peak(e, 'trainer'))} | {mb(plan)} | {n} |")
    if res.get("train") and not res.get("env", {}).get("tiny"):
        lines += ["", "`peftlab plan` as the current code estimates these rows (computed when this section is rendered, "
                  "from the models' configs: bf16 autocast on CUDA, batch "
                  f"{tt.HP['batch_size']} x {tt.HP['max_length']} tokens; the table's plan column is the run's own "
                  "estimate, from the code of that run), against each side's measured peak. The rounds' longest "
                  f"batch reaches {tt.HP['max_length']} tokens. peftlab trains its longest batch first, before AdamW "
                  "has allocated its two moments, so in a one-epoch round its peak lacks them (the plan holds "
                  "them, as every later epoch's first step does); the Trainer meets its longest batch later.",
                  *plan_rows(res, estimate)]
    if res.get("peak"):
        lines += ["", f"Measured {res['peak'].get('dtype')} matmul TFLOP/s (best of 3): " + ", ".join(
            f"{k} {v / 1e12:.3g}" for k, v in res["peak"]["rates"].items()) + "; the peak is the largest."]
    icl = res.get("icl") or {}
    if "0-shot" in icl:
        lines += ["", "In-context classification (SmolLM2-135M, peftlab's shared-prefix scorer through "
                  "`run_experiment`, template nli, batch 8): " + ", ".join(
                      f"{k} {v['median_ex_s']:.0f} examples/s ({v.get('precision', 'fp32')})"
                      for k, v in icl.items() if k.endswith("-shot"))
                  + f". vs lm-eval: {icl.get('lm_eval', LM_EVAL)}."]
    else:
        lines += ["", f"In-context vs lm-eval: {LM_EVAL}."]
    lat = res.get("latency") or {}
    if lat:
        lines += ["", "Inference latency, median ms per forward (tokenisation excluded; `peftlab predict` itself "
                  "runs on the CPU):", "", "| model, batch, precision | tokens | base | merged | unmerged | "
                  "unmerged / merged |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['tokens']} | {v['base']:.2f} | {v['merged']:.2f} | {v['unmerged']:.2f} | "
                  f"{v['unmerged'] / v['merged']:.2f}x |" for k, v in lat.items()]
    # error_text() is "message | traceback tail": the section keeps the message, the JSON both
    problems = [f"- {k}: {v.split(' | ')[0]}" for k, v in res.get("errors", {}).items()]
    problems += [f"- {e['model']}/{e['method']} {k}: {v.split(' | ')[0]}" for e in res.get("train", {}).values()
                 for k, v in e.get("errors", {}).items()]
    if problems or res.get("notes"):
        lines += ["", "Not measured or failed:", *problems, *[f"- {n}" for n in res.get("notes", [])]]
    if any("NonFiniteLoss" in p for p in problems) and before_masks(str(env.get("git") or "")):
        lines += ["", NAN_NOTE]
    return "\n".join(lines) + "\n"


#: what the section says of NaN losses measured before peftlab.backbones.masks existed
NAN_NOTE = ("These NaN losses were measured before peftlab.backbones.masks (2026-12-06). Left padding gives "
            "a decoder's leading pad positions query rows that attend to no key; transformers 5 hands them "
            "to SDPA as they are, and CUDA kernels return NaN for such rows (cuDNN attention's backward at "
            "sequence lengths of 64 modulo 128, SDPA's default on H100/H200 since torch 2.11: "
            "pytorch/pytorch#196678; peftlab pads to a multiple of 8, the Trainer does not). peftlab's decoders "
            "now load with masks in which such a row attends to every key (no real position's output "
            "changes; tests/test_masks.py). Unconfirmed on a GPU until the next device run: "
            "`GPU_PROBE=1 bash bench/gpu_device.sh` (bench/gpu_nan_probe.py, with and without the fix).")


def before_masks(commits: str) -> bool:
    """Whether every commit of a run (``env.git``: short ids, comma-separated) lacks
    peftlab/backbones/masks.py; False where git cannot tell."""
    import subprocess

    ids = [c.strip() for c in commits.split(",") if c.strip()]
    if not ids:
        return False
    def git(obj: str) -> bool:
        return subprocess.run(["git", "cat-file", "-e", obj], cwd=Path(__file__).parent, capture_output=True).returncode == 0

    # a commit this clone does not have (shallow), or no git: cannot tell
    return all(git(f"{c}^{{commit}}") and not git(f"{c}:peftlab/backbones/masks.py") for c in ids)


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several device runs (a later run's part replaces an earlier one's): GPU time
    is scarce, so a rerun may measure only the parts that failed. Errors and notes keep their run's
    number; ``args`` are those of the run the train part came from; every command and commit is kept."""
    if len(runs) == 1:
        return runs[0]
    out: dict[str, Any] = {"command": "; ".join(f"run {i}: {r.get('command', '')}" for i, r in enumerate(runs, 1)),
                           "errors": {}, "notes": [], "env": dict(runs[-1].get("env", {})),
                           "args": runs[-1].get("args", {})}
    gits = list(dict.fromkeys(str(r.get("env", {}).get("git")) for r in runs))
    out["env"]["git"] = ", ".join(gits)
    out["env"]["tiny"] = any(r.get("env", {}).get("tiny") for r in runs)
    for i, r in enumerate(runs, 1):
        parts = [p for p in PARTS if r.get(p)]
        for p in parts:
            out[p] = r[p]
        if "train" in parts:
            out["args"] = r.get("args", {})
        out["errors"].update({f"run {i} {k}": v for k, v in r.get("errors", {}).items()})
        out["notes"] += [f"run {i}: {n}" for n in r.get("notes", [])]
    return out


def render_only(*paths: Path) -> bool:
    """Print the section from saved JSONs (several: merged, see :func:`merge_runs`) and write it into
    BENCHMARKS.md, unless a run was tiny or had no GPU (its numbers mean nothing); returns whether it wrote."""
    res = merge_runs([json.loads(p.read_text(encoding="utf-8")) for p in paths])
    body = render(res)
    if res.get("env", {}).get("tiny") or not res.get("env", {}).get("gpu"):
        print(body + "\n(tiny or CPU-only run: BENCHMARKS.md left alone)")
        return False
    benchkit.write_section(SECTION, body)
    return True


# --- main -------------------------------------------------------------------------------------------

PARTS = ("peak", "train", "icl", "latency")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / ".gpudata")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_gpu" / "gpu.json")
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts to run, of {','.join(PARTS)}")
    ap.add_argument("--methods", default=",".join(TRAIN_METHODS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-examples", type=int, default=1024)
    ap.add_argument("--warmup-examples", type=int, default=128)
    ap.add_argument("--eval-examples", type=int, default=64, help="peftlab evaluates after training (not timed)")
    ap.add_argument("--icl-examples", type=int, default=256)
    ap.add_argument("--latency-rounds", type=int, default=40)
    ap.add_argument("--train-budget-s", type=float, default=130,
                    help="seconds for the train part: no round starts that would end later (the first always runs)")
    ap.add_argument("--tiny", action="store_true", help="tiny models and sizes (automatic without CUDA)")
    ap.add_argument("--render-only", type=Path, nargs="+", metavar="JSON",
                    help="write BENCHMARKS.md's GPU section from JSON (several: one run's parts each, later ones win)")
    ap.add_argument("--prepare-data", type=Path, metavar="DIR", help="write the data folder (needs the aliases)")
    args = ap.parse_args()
    if args.prepare_data:
        prepare_data(args.prepare_data)
        print(f"wrote {args.prepare_data}")
        return 0
    if args.render_only:
        render_only(*args.render_only)
        return 0
    args.tiny = args.tiny or not cuda()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the Trainer side's "newly initialised head" reports
    hf_logging.disable_progress_bar()
    if args.tiny:
        args.rounds, args.round_examples, args.warmup_examples = min(args.rounds, 2), 32, 16  # every code path
        args.eval_examples, args.icl_examples, args.latency_rounds = 8, 8, 3
        torch.set_num_threads(1)
    args.methods = args.methods.split(",")
    t0 = time.perf_counter()
    res: dict[str, Any] = {"command": "python bench/gpu.py " + " ".join(sys.argv[1:]), "errors": {}, "notes": [],
                           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        res["seconds"] = round(time.perf_counter() - t0, 1)
        args.out.write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")

    def part(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failing part must not cost the others
            res["errors"][name] = error_text(exc)
            print(f"{name}: FAILED {res['errors'][name]}", file=sys.stderr, flush=True)
        res.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t, 1)
        print(f"{name}: {res['part_seconds'][name]} s", flush=True)
        save()
        return res.get(name)

    res["env"] = environment(args.tiny)
    print(json.dumps(res["env"]), flush=True)
    only = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_gpu.") as tmp:
        work = Path(tmp)
        models = part("models", lambda: {k: str(v) for k, v in build_models(args.data_dir, work, args.tiny).items()})
        if not models:
            return 1
        models = {k: Path(v) for k, v in models.items()}
        if "peak" in only:
            part("peak", lambda: gemm_part(models, args.tiny))
        if "latency" in only:  # the short parts first: the train part fits its rounds to its budget
            part("latency", lambda: latency_part(models, args))
        if "icl" in only:
            part("icl", lambda: icl_part(models, args, work))
        if "train" in only:
            def train() -> dict[str, Any]:
                train_part(TrainBench(args, models, work), res, save, time.perf_counter() + args.train_budget_s)
                return res["train"]

            part("train", train)
    res["targets"] = [{k: v for k, v in t.items() if k != "fmt"} for t in targets(res)]
    save()
    print(render(res))
    print(f"wrote {args.out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
