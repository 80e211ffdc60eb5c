"""A shipped config's method list, run on a MultiNLI subset (real data from ../shared/data).

Usage: python bench/mnli_compare.py [--suite core|all] [--n-train 2000] [--n-eval 1000] [--epochs 2]
``core`` takes the methods of configs/drugreview.yaml (the four of the default comparison), ``all``
those of configs/all_methods.yaml (every method), with their hyperparameters unchanged, so the
benchmark is "the same comparison on MultiNLI". Writes runs/bench_mnli_<suite>/ and replaces that
suite's section of BENCHMARKS.md. Skips (exit 0, with a message) when ../shared/data/mnli is not
there: the package never needs it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from peftlab.config import load_raw, validate_raw
from peftlab.report.sections import replace_section
from peftlab.runners.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mnli"
SUITES = {"core": "drugreview.yaml", "all": "all_methods.yaml"}


def section(suite: str) -> str:
    return f"## MultiNLI comparison ({suite}: methods of configs/{SUITES[suite]})"


def config(args: argparse.Namespace) -> dict:
    return {
        "name": "bench_mnli",
        "backbone": args.backbone,
        "task": {
            "source": "jsonl", "name": "mnli",
            "train_file": str(DATA / "train.jsonl.gz"), "eval_file": str(DATA / "validation_matched.jsonl"),
            "text_column": "premise", "text_pair_column": "hypothesis", "label_column": "label",
            "label_names": ["entailment", "neutral", "contradiction"],
            "n_train": args.n_train, "n_eval": args.n_eval,
        },
        "methods": load_raw(ROOT / "configs" / SUITES[args.suite])["methods"],
        "train": {"epochs": args.epochs, "batch_size": 32, "max_length": 128, "seed": 0,
                  "num_threads": args.threads},
        "output_dir": str(ROOT / "runs" / f"bench_mnli_{args.suite}"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--suite", choices=sorted(SUITES), default="core")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skip: {DATA} not found (benchmark data is optional)")
        return 0
    cfg = validate_raw(config(args))
    t0 = time.perf_counter()
    run_experiment(cfg, quiet=True)
    wall = time.perf_counter() - t0
    table = (Path(cfg.output_dir) / "comparison.md").read_text(encoding="utf-8").split("\n", 2)[2]
    cmd = "python bench/mnli_compare.py " + " ".join(sys.argv[1:])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    body = (
        f"{section(args.suite)}\n\n"
        f"MiniLM-L6 ({args.backbone}) on MultiNLI: {args.n_train} training pairs (stratified from train), "
        f"{args.n_eval} from validation_matched, {args.epochs} epochs (per-method `epochs` of the config apply).\n"
        f"Command: `{cmd.strip()}`; hardware: {device} ({platform.machine()}); whole script {wall:.0f} s.\n\n"
        f"{table.strip()}\n\n"
    )
    bench_md = ROOT / "BENCHMARKS.md"
    text = bench_md.read_text(encoding="utf-8") if bench_md.exists() else "# Benchmarks\n\nEvery number below comes from the command printed with it.\n"
    bench_md.write_text(replace_section(text, section(args.suite), body), encoding="utf-8")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
