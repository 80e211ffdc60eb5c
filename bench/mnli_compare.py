"""The default four-method comparison on a MultiNLI subset (real data from ../shared/data).

Usage: python bench/mnli_compare.py [--n-train 2000] [--n-eval 1000] [--epochs 2] [key=value ...]
Writes runs/bench_mnli/ and replaces the "MultiNLI comparison" section of BENCHMARKS.md.
Skips (exit 0, with a message) when ../shared/data/mnli is not there: the package never needs it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from peftlab.config import validate_raw
from peftlab.runners.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mnli"
SECTION = "## MultiNLI comparison"


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
        "methods": [
            {"method": "full", "lr": 1e-4},
            {"method": "partial", "top_k": 2, "lr": 2e-4},
            {"method": "linear_probe", "lr": 3e-2, "epochs": 20},
            {"method": "lora", "r": 8, "alpha": 16, "lr": 2e-3},
        ],
        "train": {"epochs": args.epochs, "batch_size": 32, "max_length": 128, "seed": 0},
        "output_dir": str(ROOT / "runs" / "bench_mnli"),
    }


def replace_section(text: str, body: str) -> str:
    start = text.find(SECTION)
    if start < 0:
        return text.rstrip() + "\n\n" + body
    end = text.find("\n## ", start + len(SECTION))
    return text[:start] + body + (text[end + 1 :] if end >= 0 else "")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--backbone", default="minilm-l6")
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
        f"{SECTION}\n\n"
        f"MiniLM-L6 ({args.backbone}) on MultiNLI: {args.n_train} training pairs (stratified from train), "
        f"{args.n_eval} from validation_matched, {args.epochs} epochs.\n"
        f"Command: `{cmd.strip()}`; hardware: {device} ({platform.machine()}); whole script {wall:.0f} s.\n\n"
        f"{table.strip()}\n\n"
    )
    bench_md = ROOT / "BENCHMARKS.md"
    text = bench_md.read_text(encoding="utf-8") if bench_md.exists() else "# Benchmarks\n\nEvery number below comes from the command printed with it.\n"
    bench_md.write_text(replace_section(text, body), encoding="utf-8")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
