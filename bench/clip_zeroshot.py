"""CLIP zero-shot, CoOp, class embeddings and a linear probe on real CLIP weights and CIFAR-10.

Usage: python bench/clip_zeroshot.py [--model PATH_OR_HUB_ID] [--k-shot 16] [--n-eval 1000] [key=value ...]

The model is the first CLIP folder under ../shared/models (a transformers folder whose config.json
says model_type "clip"), or --model. The data are CIFAR-10 JPEGs from ../shared/data/cifar10
(k images per class for training, a stratified eval subset), copied into an image folder under
runs/bench_clip/data. Skips (exit 0, with a message) when either is missing: the package never
needs ../shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from peftlab.config import apply_override, parse_override, validate_raw
from peftlab.runners.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR = SHARED / "data" / "cifar10"
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a low resolution photo of a {}.",
             "a photo of the small {}.", "itap of a {}.", "art of the {}."]


def find_clip(models: Path) -> Path | None:
    for cfg in sorted(models.glob("*/config.json")) if models.is_dir() else []:
        try:
            if json.loads(cfg.read_text()).get("model_type") == "clip":
                return cfg.parent
        except (OSError, ValueError):
            continue
    return None


def extract(zip_path: Path, out: Path, per_class: int, seed: int) -> None:
    """Copy ``per_class`` seeded JPEGs of each class from the zip into ``out/<class>/``."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zip_path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".jpg")]
        by_class: dict[str, list[str]] = {}
        for n in names:
            by_class.setdefault(n.split("/")[-2], []).append(n)
        for cls, files in sorted(by_class.items()):
            (out / cls).mkdir(parents=True, exist_ok=True)
            for n in rng.choice(sorted(files), size=min(per_class, len(files)), replace=False):
                (out / cls / Path(n).name).write_bytes(zf.read(n))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--k-shot", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=100, help="eval images per class")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    model = args.model or find_clip(SHARED / "models")
    if model is None:
        print(f"skip: no CLIP weights under {SHARED / 'models'} (pass --model PATH_OR_HUB_ID)")
        return 0
    if not (CIFAR / "train.zip").is_file():
        print(f"skip: no CIFAR-10 at {CIFAR}")
        return 0
    data = ROOT / "runs" / "bench_clip" / "data"
    if not data.is_dir():
        extract(CIFAR / "train.zip", data / "train", args.k_shot, seed=0)
        extract(CIFAR / "test.zip", data / "test", args.n_eval, seed=0)
    raw = {
        "name": "bench_clip",
        "backbone": str(model),
        "task": {"source": "image_folder", "name": "cifar10", "data_dir": str(data), "k_shot": args.k_shot},
        "methods": [
            {"method": "clip_zeroshot", "name": "zeroshot_1", "templates": TEMPLATES[:1], "search": False},
            {"method": "clip_zeroshot", "name": "zeroshot_ensemble", "templates": TEMPLATES},
            {"method": "coop", "lr": 2e-3, "epochs": 10},
            {"method": "class_embeddings", "lr": 1e-3, "epochs": 10, "templates": TEMPLATES},
            {"method": "linear_probe", "lr": 1e-2, "epochs": 50},
        ],
        "train": {"epochs": 10, "batch_size": 32, "seed": 0},
        "output_dir": str(ROOT / "runs" / "bench_clip"),
    }
    for text in args.overrides:
        apply_override(raw, *parse_override(text))
    t0 = time.perf_counter()
    cfg = validate_raw(raw)
    results = run_experiment(cfg)
    print((Path(cfg.output_dir) / "comparison.md").read_text())
    print(f"wall {time.perf_counter() - t0:.0f} s; model {model}")
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
