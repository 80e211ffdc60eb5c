"""Seeded, stratified subsampling (pure functions of labels and a seed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from peftlab.infra.errors import PeftlabError


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Pick ``n`` indices keeping class proportions (largest-remainder rounding), seeded.

    Every class present keeps at least one example when ``n`` allows it, so a rare class is never
    silently dropped from a small subsample. Returns indices in ascending order.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts / counts.sum() * n
    take = np.floor(quota).astype(int)
    if n >= len(classes):
        take = np.maximum(take, 1)
    remainder = n - take.sum()
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    i = 0
    while remainder > 0:
        c = order[i % len(order)]
        if take[c] < counts[c]:
            take[c] += 1
            remainder -= 1
        i += 1
    while remainder < 0:  # the minimum of one per class overshot: trim the largest classes
        c = int(np.argmax(take))
        take[c] -= 1
        remainder += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, take)
        if k > 0
    ]
    return np.sort(np.concatenate(picked))


def stratified_split(labels: np.ndarray, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, eval) with ``eval_fraction`` of each class in eval."""
    n_eval = max(1, int(round(len(labels) * eval_fraction)))
    eval_idx = stratified_indices(labels, n_eval, seed)
    mask = np.ones(len(labels), dtype=bool)
    mask[eval_idx] = False
    return np.flatnonzero(mask), eval_idx


def group_split(groups: np.ndarray, labels: np.ndarray, eval_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, eval) by whole groups (movies): no group on both sides.

    About ``eval_fraction`` of the groups go to eval, stratified as well as whole groups allow:
    groups are ordered by their label shares (ties in seeded random order) and every
    ``1 / eval_fraction``-th one, from a seeded random start, is held out, so eval spans the
    range from all-negative to all-positive groups. Ascending indices.
    """
    groups, labels = np.asarray(groups), np.asarray(labels)
    names, inverse = np.unique(groups, return_inverse=True)
    shares = np.zeros((len(names), int(labels.max()) + 1))
    np.add.at(shares, (inverse, labels), 1.0)
    shares /= shares.sum(1, keepdims=True)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(names))
    order = shuffled[np.lexsort(shares[shuffled].T[::-1])]  # by label shares; ties stay shuffled
    start = rng.random()
    pos = np.arange(len(names)) * eval_fraction + start
    held = order[np.floor(pos + eval_fraction) > np.floor(pos)]
    in_eval = np.isin(inverse, held)
    return np.flatnonzero(~in_eval), np.flatnonzero(in_eval)


def k_shot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """At most ``k`` indices per class (all of a class with fewer), seeded; ascending order.

    Few-shot papers (CoOp, CLIP's linear probes) sample per class, not by proportion: every class
    gets the same budget however rare it is in the source.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(idx, size=min(k, len(idx)), replace=False)
              for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(picked))


def hold_out(split: Any, eval_fraction: float, split_seed: int) -> tuple[Any, Any]:
    """(train, eval) from a source without an eval split: a stratified ``eval_fraction``, seeded."""
    tr_idx, ev_idx = stratified_split(split.labels, eval_fraction, split_seed)
    return split.take(tr_idx), split.take(ev_idx)


def finish_splits(train: Any, ev: Any | None, cfg: Any, seed: int, split_seed: int,
                  k_shot: int | None = None) -> tuple[Any, Any]:
    """What every task loader does after reading: hold out an eval split when the source has
    none (fixed ``split_seed``, so the split never moves with the training seed), then k-shot /
    n_train / n_eval subsampling (seeded), and refuse a training split with a single class.

    ``train`` and ``ev`` are any splits with ``labels`` and ``take(indices)`` (text or images).
    """
    if ev is None:
        train, ev = hold_out(train, cfg.eval_fraction, split_seed)
    if k_shot is not None:  # image tasks: at most k training examples per class
        train = train.take(k_shot_indices(train.labels, k_shot, seed))
    if cfg.n_train is not None:
        train = train.take(stratified_indices(train.labels, cfg.n_train, seed))
    if cfg.n_eval is not None:
        ev = ev.take(stratified_indices(ev.labels, cfg.n_eval, seed))
    if len(np.unique(train.labels)) < 2:
        raise PeftlabError("train data: fewer than two classes present")
    return train, ev
