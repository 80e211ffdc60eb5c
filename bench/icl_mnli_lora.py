"""Prompting vs LoRA on a MultiNLI subset, in one comparison table (issue #4's bench acceptance).

Rows, all on the same subset (stratified, seed 0) and through ``run_experiment`` so they share
the RunResult schema and the report's table:

- ``zero_shot`` / ``four_shot``: SmolLM2-135M-Instruct prompted (``icl``, template ``nli``,
  plain prompts, class-balanced demonstrations, nothing trained);
- ``lm_lora_smollm2``: LoRA on SmolLM2 trained to *say* the label's verbalizer, scored as ``icl``;
- ``lora_smollm2``: LoRA on SmolLM2 with a sequence-classification head;
- ``lora_minilm``: LoRA on MiniLM-L6 with a classification head.

Sized for a CPU: a few hundred training pairs and one epoch take minutes, not hours; the sizes
go into the section. Usage (CLI kept stable for bench/run_all):

    python bench/icl_mnli_lora.py [--n-train 300] [--n-eval 150] [--epochs 1] [--threads N]

Run it from the repository root with this checkout's peftlab importable (``pip install -e .``,
or ``PYTHONPATH=.``: Python puts bench/, not the current folder, first on the path).
Writes runs/bench_icl_mnli_lora/ and replaces the "In-context vs LoRA on MultiNLI" section of
BENCHMARKS.md. Skips (exit 0) when ../shared/data/mnli is absent (the package never needs it).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from peftlab.config import validate_raw
from peftlab.report.sections import write_section
from peftlab.runners.experiment import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icl_mnli import DATA, ROOT, task  # noqa: E402  (the same MultiNLI subset)

SECTION = "## In-context vs LoRA on MultiNLI"
LM = "smollm2-135m"


def methods(args: argparse.Namespace) -> list[dict]:
    prompt = {"backbone": LM, "template": "nli", "chat": "off", "max_demo_chars": None}
    return [
        {"method": "icl", "name": "zero_shot", "shots": 0, **prompt},
        {"method": "icl", "name": "four_shot", "shots": 4, "seeds": args.seeds, **prompt},
        {"method": "lm_lora", "name": "lm_lora_smollm2", "r": 8, "alpha": 16, "lr": args.lm_lr, **prompt},
        {"method": "lora", "name": "lora_smollm2", "backbone": LM, "r": 8, "alpha": 16, "lr": args.lm_lr},
        {"method": "lora", "name": "lora_minilm", "r": 8, "alpha": 16, "lr": 5e-3},
    ]


def config(args: argparse.Namespace) -> dict:
    return {
        "name": "bench_icl_mnli_lora",
        "backbone": "minilm-l6",
        "task": task(args.n_train, args.n_eval),
        "methods": methods(args),
        "train": {"epochs": args.epochs, "batch_size": 8, "max_length": 128, "seed": 0,
                  "num_threads": args.threads, "device": "cpu"},
        "output_dir": str(ROOT / "runs" / "bench_icl_mnli_lora"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=300, help="training pairs (also the demonstration pool)")
    ap.add_argument("--n-eval", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lm-lr", type=float, default=5e-4, help="learning rate of the two SmolLM2 LoRA rows")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2],
                    help="demonstration seeds of the four-shot row")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skip: {DATA} not found (benchmark data is optional)")
        return 0
    cfg = validate_raw(config(args))
    t0 = time.perf_counter()
    results = run_experiment(cfg, quiet=True)
    wall = time.perf_counter() - t0
    table = (Path(cfg.output_dir) / "comparison.md").read_text(encoding="utf-8").split("\n", 2)[2]
    cmd = "python bench/icl_mnli_lora.py " + " ".join(sys.argv[1:])
    body = (
        f"{SECTION}\n\n"
        f"MultiNLI: {args.n_train} training pairs (stratified from train; also the pool of the four-shot "
        f"demonstrations), {args.n_eval} pairs from validation_matched; {args.epochs} epoch(s), batch 8, "
        f"max_length 128, seed 0. SmolLM2-135M-Instruct rows: prompting (template `nli`, plain prompts, "
        f"summed log-likelihood; four-shot over demonstration seeds {args.seeds}), LoRA r=8 trained to say the "
        f"verbalizer (`lm_lora`, lr {args.lm_lr}), LoRA r=8 with a classification head (`lora`, lr {args.lm_lr}); "
        f"MiniLM-L6: LoRA r=8, lr 5e-3. A small budget on a shared CPU: read the fine-tuned rows as "
        f"'what a few hundred pairs and one epoch buy', not as converged numbers. Times are wall seconds on a "
        f"machine shared with other jobs whose load changed while the rows ran one after another: compare them "
        f"only loosely (bench/lm_lora_step.py times the steps side by side: with the output head applied only at "
        f"the answer positions an `lm_lora` step costs about what a `lora` step with a classification head does).\n"
        f"Command: `{cmd.strip()}`; hardware: CPU ({platform.machine()}), {torch.get_num_threads()} torch "
        f"thread(s), machine shared with other jobs; whole script {wall:.0f} s.\n\n"
        f"{table.strip()}\n\n"
    )
    write_section(ROOT / "BENCHMARKS.md", SECTION, body)
    print(body)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
