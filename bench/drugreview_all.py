"""Every method on the offline drug reviews: ``peftlab run configs/all_methods.yaml``, as a section.

Usage: python bench/drugreview_all.py [--threads 1] [--precision probe|fp32|bf16] [--quick] [--resume]

Runs exactly the command printed in the section (in a child process, this checkout's peftlab),
then writes its comparison table and the rows flagged ``collapsed`` into the "Every method on drug
reviews" section of BENCHMARKS.md. The full run takes about 40 minutes of CPU on 2 cores (over an
hour of wall time on a shared machine). ``--quick``: 60 training / 30 eval reviews, one epoch for
every row, into runs/all_methods_quick (a smoke run of this script, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

_USER_PRECISION = os.environ.get("PEFTLAB_CPU_PRECISION")  # before benchkit sets its fp32 default

import benchkit  # noqa: E402

from peftlab.config import load_raw  # noqa: E402

SECTION = "## Every method on drug reviews (configs/all_methods.yaml)"
CONFIG = "configs/all_methods.yaml"


def set_lrs(config: str = CONFIG) -> str:
    """The rows whose learning rate the config sets itself, in words for the section ("" if none)."""
    rows = [m for m in load_raw(benchkit.ROOT / config)["methods"] if "lr" in m]
    return "; set in the config: " + ", ".join(f"{m['method']} {m['lr']:g}" for m in rows) if rows else ""


def peftlab_args(args: argparse.Namespace) -> tuple[list[str], Path]:
    out = "runs/all_methods_quick" if args.quick else "runs/all_methods"
    cmd = ["run", CONFIG, "-q", "--resume" if args.resume else "--fresh", f"output_dir={out}",
           f"train.num_threads={args.threads}"]
    if args.quick:
        rows = load_raw(benchkit.ROOT / CONFIG)["methods"]
        cmd += ["task.n_train=60", "task.n_eval=30", "train.epochs=1"] + [f"methods.{i}.epochs=1" for i in range(len(rows))]
    return cmd, benchkit.ROOT / out


def collapsed(run_dir: Path) -> list[str]:
    names = []
    for f in sorted(run_dir.glob("*/results.json")):
        r = json.loads(f.read_text(encoding="utf-8"))
        if "collapsed" in r.get("flags", []) and r.get("method") != "majority_class":
            names.append(r["name"])
    return names


def row_precisions(run_dir: Path) -> str:
    """Which rows trained in which precision (from their results.json), e.g. 'bf16 (full, lora), fp32 (qlora)'."""
    by: dict[str, list[str]] = {}
    for f in sorted(run_dir.glob("*/results.json")):
        r = json.loads(f.read_text(encoding="utf-8"))
        if r.get("precision"):
            by.setdefault(r["precision"], []).append(r["name"])
    return "; ".join(f"{k} ({', '.join(v)})" for k, v in sorted(by.items())) or "-"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--resume", action="store_true",
                    help="continue the last run (peftlab's resume: finished rows are kept, failed and missing ones run)")
    ap.add_argument("--precision", choices=["probe", "fp32", "bf16"], default=_USER_PRECISION or "probe",
                    help="what peftlab's auto precision means on a CPU (default: peftlab's probe, as a user gets it)")
    args = ap.parse_args()
    cmd, run_dir = peftlab_args(args)
    env = {**os.environ, "PYTHONPATH": str(benchkit.ROOT), "PEFTLAB_CPU_PRECISION": args.precision}
    t0, c0 = time.perf_counter(), os.times()
    code = subprocess.run([sys.executable, "-m", "peftlab", *cmd], cwd=benchkit.ROOT, env=env).returncode
    wall, c1 = time.perf_counter() - t0, os.times()
    cpu_min = (c1.children_user + c1.children_system - c0.children_user - c0.children_system) / 60
    table_file = run_dir / "comparison.md"
    if code != 0 or not table_file.is_file():
        print(f"peftlab run failed (exit {code}); section not written", file=sys.stderr)
        return 1
    table = table_file.read_text(encoding="utf-8").split("\n", 2)[2].strip()
    flagged = collapsed(run_dir)
    precisions = row_precisions(run_dir)
    body = "\n".join([
        SECTION, "",
        f"MiniLM-L6 on the offline drug-review task ({'a 60 / 30 review smoke subset, 1 epoch' if args.quick else '600 train / 378 test reviews'}, "
        f"3 classes), every method with the hyperparameters of `{CONFIG}` (learning rates: each method's default, "
        "from the section \"Per-method default learning rates\"" + set_lrs() + "), "
        f"{args.threads} torch thread(s); precision (peftlab's auto, PEFTLAB_CPU_PRECISION={args.precision}): "
        f"{precisions}.",
        f"Command: `peftlab {shlex.join(cmd)}` (run by `{benchkit.command('drugreview_all.py')}`); "
        f"hardware: {benchkit.hardware(args.threads)}; {wall / 60:.1f} min wall, {cpu_min:.0f} CPU-min"
        + (" (this call only: it resumed an earlier run and kept its finished rows)." if args.resume else "."),
        "", table, "",
        (f"Rows flagged `collapsed` (every eval prediction is one class): {', '.join(flagged)}."
         if flagged else "No method collapsed to a single class."),
    ])
    benchkit.write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
