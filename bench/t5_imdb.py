"""The course report's T5 comparison on IMDB: ``configs/t5_imdb.yaml``'s rows on ../shared/data/imdb.

Usage: python bench/t5_imdb.py [--backbone t5-small] [--n-train 5000] [--n-eval 2000] [--threads N]

Why: a course report adapts T5-small to IMDB as a text-to-text task and compares full fine-tuning
(90.1), a 10-token soft prompt (87.0), Pfeiffer bottleneck adapters of width 8 (90.7) and LoRA r=8
/ r=1 on q, v (88.9 / 88.8), each with a hand-checked trainable count. This script runs exactly
those rows (the methods, head, verbalizers and training settings of ``configs/t5_imdb.yaml``) on
the IMDB reviews of ../shared/data/imdb (``train.jsonl.gz``; peftlab's seeded stratified split
holds out the evaluation reviews, since that copy has no test split) and writes the section
"T5 on IMDB" of BENCHMARKS.md: accuracy with its interval, counted trainables beside the report's,
time and memory.

It needs a T5 checkpoint: a hub id (with internet) or a local folder. None ships in any package,
so offline, without one, it says so in one line and skips (exit 0, BENCHMARKS.md untouched), as it
does without ../shared/data/imdb.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchkit

from peftlab.config import BackboneConfig, load_raw
from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import atomic_write_text

SECTION = "## T5 on IMDB (the course report's comparison)"
CONFIG = "configs/t5_imdb.yaml"
DATA = benchkit.SHARED / "data" / "imdb" / "train.jsonl.gz"
#: the report's trainable counts without any head (tests/test_t5.py reproduces them from T5-small's config)
REPORT_COUNTS = {"lora8": 294_912, "lora1": 36_864, "prompt10": 5_120, "pfeiffer8": 104_544}
#: the report's accuracies (%, its own IMDB split)
REPORT_ACCURACY = {"full": 90.1, "prompt10": 87.0, "pfeiffer8": 90.7, "lora8": 88.9, "lora1": 88.8}


def bench_config(source: dict[str, Any], backbone: str, n_train: int, n_eval: int, threads: int,
                 out: str) -> dict[str, Any]:
    """``configs/t5_imdb.yaml`` with the IMDB reviews of ../shared/data (labels negative/positive,
    so the verbalizers are the label names themselves) and the given backbone (pure)."""
    bb = dict(source["backbone"]) if isinstance(source["backbone"], dict) else {"name": source["backbone"]}
    bb.pop("verbalizers", None)  # the hub's labels are neg/pos; this copy's are the words themselves
    return {**source, "backbone": {**bb, "name": backbone}, "output_dir": out,
            "task": {"source": "jsonl", "name": "imdb", "train_file": str(DATA), "text_column": "text",
                     "label_column": "label", "label_names": ["negative", "positive"],
                     "n_train": n_train, "n_eval": n_eval},
            "train": {**source.get("train", {}), "num_threads": threads}}


def unavailable(backbone: str) -> str | None:
    """Why the run cannot happen here, in one line; None when it can."""
    from peftlab.backbones.loaders import load_hf_config

    if not DATA.is_file():
        return f"skip: {DATA} not found (benchmark data is optional)"
    try:
        load_hf_config(BackboneConfig(name=backbone))
    except PeftlabError as exc:
        return f"skip: no T5 checkpoint available ({exc})"
    return None


def table(run_dir: Path) -> list[str]:
    """One line per trained row of the run: accuracy and counts beside the report's."""
    from peftlab.results import read_result
    from peftlab.report.paired import accuracy_interval, interval_text

    lines = ["| row | method | accuracy (95% CI) | report's accuracy | trainable (counted) | report's count | "
             "params check | train s | peak MB |", "|---|---|---|---|---|---|---|---|---|"]
    for f in sorted(run_dir.glob("*/results.json")):
        r = read_result(f)
        if r.method == "majority_class" or r.params is None:
            continue
        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f} {interval_text(accuracy_interval(r))}"
        check = {True: "ok", False: "MISMATCH", None: "no formula"}[r.params.agree]
        report = REPORT_COUNTS.get(r.name)
        lines.append(
            f"| {r.name} | {r.method} | {acc} | {REPORT_ACCURACY.get(r.name, '-')} | {r.params.trainable:,} | "
            f"{'-' if report is None else f'{report:,}'} | {check} | {r.timing.train_s if r.timing else 0:.0f} | "
            f"{(r.peak_memory_bytes or 0) / 2**20:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="t5-small", help="a T5 hub id or local checkpoint folder")
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    os.chdir(benchkit.ROOT)
    why = unavailable(args.backbone)
    if why is not None:
        print(why)
        return 0
    out = Path("runs") / "t5_imdb_bench"
    raw = bench_config(load_raw(CONFIG), args.backbone, args.n_train, args.n_eval, args.threads, str(out))
    cfg_file = out / "config.json"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_file, json.dumps(raw, indent=1) + "\n")
    cmd = [sys.executable, "-m", "peftlab", "run", str(cfg_file), "-q"]
    t0 = time.perf_counter()
    code = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(benchkit.ROOT)}).returncode
    if code != 0:
        print(f"peftlab run failed (exit {code}); section not written", file=sys.stderr)
        return 1
    body = "\n".join([
        SECTION, "",
        f"`{args.backbone}` on IMDB reviews from ../shared/data/imdb ({args.n_train:,} train / {args.n_eval:,} held-out "
        f"reviews, peftlab's seeded stratified split), the rows, head and settings of `{CONFIG}`. The report's accuracies "
        "are on its own split and training length: read the ordering and the counts, not the last point.",
        f"Command: `{benchkit.command('t5_imdb.py')}`; "
        f"hardware: {benchkit.hardware(args.threads)}; {(time.perf_counter() - t0) / 60:.1f} min wall.", "",
        *table(out), ""])
    benchkit.write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
