"""Data loading: sources, label mapping, stratified subsampling, batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftlab.config import TaskConfig
from peftlab.infra.errors import PeftlabError
from peftlab.runners.batching import LengthGroupedBatches, sorted_batches
from peftlab.tasks import load_task
from peftlab.tasks.builtin import BUILTIN_TASKS
from peftlab.tasks.sampling import stratified_indices, stratified_split


def test_stratified_indices_keeps_proportions_and_is_seeded():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    idx = stratified_indices(labels, 20, seed=3)
    assert len(idx) == 20 and len(set(idx)) == 20
    assert np.bincount(labels[idx]).tolist() == [12, 6, 2]
    assert np.array_equal(idx, stratified_indices(labels, 20, seed=3))
    assert not np.array_equal(idx, stratified_indices(labels, 20, seed=4))


def test_rare_class_survives_small_sample():
    labels = np.array([0] * 98 + [1] * 2)
    assert 1 in labels[stratified_indices(labels, 5, seed=0)]


def test_stratified_split_is_a_partition():
    labels = np.array([0, 1, 2] * 20)
    tr, ev = stratified_split(labels, 0.25, seed=0)
    assert sorted(np.concatenate([tr, ev]).tolist()) == list(range(60))
    assert np.bincount(labels[ev]).tolist() == [5, 5, 5]


ROWS = [("good drug", "pos"), ("bad drug", "neg"), ("meh", "neu"), ("great", "pos"), ("awful", "neg"), ("okay", "neu")] * 3


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_file_sources(tmp_path: Path, kind: str):
    frame = pd.DataFrame({"review": [r[0] for r in ROWS], "y": [r[1] for r in ROWS]})
    path = tmp_path / f"d.{kind}"
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(path)
    cfg = TaskConfig(source=kind, train_file=str(path), text_column="review", label_column="y",
                     label_names=["neg", "neu", "pos"], eval_fraction=1 / 3)
    data = load_task(cfg, seed=0)
    assert data.label_names == ["neg", "neu", "pos"]
    assert len(data.train) == 12 and len(data.eval) == 6
    assert set(data.train.texts).isdisjoint(set()) and data.train.pairs is None
    # labels line up with texts
    for t, y in zip(data.train.texts, data.train.labels):
        assert dict(ROWS)[t] == data.label_names[y]


def test_pairs_integer_labels_and_subsampling(tmp_path: Path):
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3} for i in range(30)]
    path = tmp_path / "nli.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TaskConfig(source="jsonl", train_file=str(path), eval_file=str(path), text_column="premise",
                     text_pair_column="hypothesis", label_names=["entailment", "neutral", "contradiction"],
                     n_train=9, n_eval=6)
    data = load_task(cfg, seed=1)
    assert data.is_pair and len(data.train) == 9 and len(data.eval) == 6
    assert np.bincount(data.train.labels).tolist() == [3, 3, 3]
    assert all(p == "h" + t[1:] for t, p in zip(data.train.texts, data.train.pairs))


@pytest.mark.parametrize(
    "content, match",
    [
        ("text,label\ngood,pos\nbad,zzz\n", "row 2 label 'zzz'"),
        ("text,label\ngood,pos\n,neg\n", "row 2 is empty"),
        ("review,label\ngood,pos\n", "task.text_column"),
        ("text,label\n", "no rows"),
    ],
)
def test_bad_data_fails_with_one_line(tmp_path: Path, content: str, match: str):
    path = tmp_path / "d.csv"
    path.write_text(content)
    cfg = TaskConfig(source="csv", train_file=str(path), label_names=["neg", "pos"])
    with pytest.raises(PeftlabError, match=match):
        load_task(cfg, seed=0)


def test_non_utf8_file(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\n\xff\xfe bad,pos\n")
    with pytest.raises(PeftlabError, match="UTF-8"):
        load_task(TaskConfig(source="csv", train_file=str(path)), seed=0)


@pytest.mark.skipif("drugreview" not in BUILTIN_TASKS, reason="no builtin")
def test_builtin_drugreview_is_real_data():
    pytest.importorskip("pandas")
    try:
        data = load_task(TaskConfig(source="builtin", name="drugreview"), seed=0)
    except PeftlabError as exc:
        pytest.skip(str(exc))
    assert (len(data.train), len(data.eval)) == (600, 378)  # 379 less the one review also in training
    assert data.eval_duplicates_dropped == 1
    assert data.label_names == ["negative", "neutral", "positive"]
    assert not any("&#039;" in t or t.startswith('"') for t in data.train.texts)


def test_builtin_eval_duplicates_dropped_and_counted(monkeypatch):
    """A builtin task's eval examples whose input repeats a training one are dropped (and counted),
    with or without an eval split of its own; the same rows from a user's csv are kept (only flagged)."""
    from peftlab.infra.guards import overlap_count
    from peftlab.tasks.base import Split, drop_eval_duplicates

    train = Split(["a", "b", "c"], np.array([0, 1, 0]), ["x", "y", "z"])
    kept, n = drop_eval_duplicates(train, Split(["a", "b", "d"], np.array([0, 1, 1]), ["x", "other", "w"]))
    assert n == 1 and kept.texts == ["b", "d"] and kept.pairs == ["other", "w"]  # a text pair is one input
    texts = [f"review {i}" for i in range(40)]
    labels = ["pos", "neg"] * 20
    frame = pd.DataFrame({"text": texts, "label": labels})
    leaky = pd.DataFrame({"text": texts[:3] + ["fresh one", "fresh two"], "label": labels[:3] + ["pos", "neg"]})
    monkeypatch.setitem(BUILTIN_TASKS._items, "dupes", lambda: (frame, leaky, ["neg", "pos"]))
    data = load_task(TaskConfig(source="builtin", name="dupes"), seed=0)
    assert data.eval_duplicates_dropped == 3 and data.eval.texts == ["fresh one", "fresh two"]
    assert overlap_count(data.train, data.eval) == 0
    doubled = pd.concat([frame, frame.iloc[:10]], ignore_index=True)  # no eval split: a hold-out of repeats
    monkeypatch.setitem(BUILTIN_TASKS._items, "dupes_holdout", lambda: (doubled, None, ["neg", "pos"]))
    held = load_task(TaskConfig(source="builtin", name="dupes_holdout"), seed=0)
    assert held.eval_duplicates_dropped > 0 and overlap_count(held.train, held.eval) == 0


def test_user_csv_duplicates_are_kept(tmp_path: Path):
    rows = "text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "eval.csv").write_text("text,label\nreview 1,pos\nnew,neg\n")
    data = load_task(TaskConfig(source="csv", train_file=str(tmp_path / "train.csv"),
                                eval_file=str(tmp_path / "eval.csv")), seed=0)
    assert len(data.eval) == 2 and data.eval_duplicates_dropped == 0


def test_length_grouped_batches_cover_everything_once():
    lengths = list(np.random.default_rng(0).integers(1, 100, size=103))
    sampler = LengthGroupedBatches(lengths, 8, seed=0)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        flat = sorted(i for b in epoch for i in b)
        assert flat == list(range(103))
    assert first != second  # a new order each epoch
    assert LengthGroupedBatches(lengths, 8, seed=0).batches(0) == first
    # grouping: padding waste far below a random batching
    def waste(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert waste(first) < 0.5 * waste(LengthGroupedBatches(lengths, 8, 0, group=False).batches(0))
    assert sorted(i for b in sorted_batches(lengths, 10) for i in b) == list(range(103))
