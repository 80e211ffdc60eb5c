"""Choosing k demonstrations from the training split: random, class-balanced, or nearest
neighbours of each query by sentence embedding (mean-pooled MiniLM, cosine similarity).

``random`` and ``balanced`` give every query the same demonstrations (so the prompt prefix is
shared and its KV cache reused); ``nearest`` gives each query its own. All are seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from peftlab.infra.registry import Registry
from peftlab.tasks.base import Split
from peftlab.backbones.loaders import resolve

#: (train split, eval split, k, seed, embed function) -> demonstration indices per eval example
Selector = Callable[[Split, Split, int, int, Callable[[list[str]], np.ndarray]], list[list[int]]]
SELECTORS: Registry[Selector] = Registry("demonstration selection")


def random_indices(labels: np.ndarray, k: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.choice(len(labels), size=min(k, len(labels)), replace=False).tolist()


def balanced_indices(labels: np.ndarray, k: int, seed: int) -> list[int]:
    """Round-robin over the classes (in a seeded order), a seeded draw within each class, then
    shuffled so the answer order carries no pattern. k < #classes: k distinct classes."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    out: list[int] = []
    while len(out) < k and any(pools.values()):
        for c in classes:
            if pools[c] and len(out) < k:
                out.append(int(pools[c].pop()))
    return [out[i] for i in rng.permutation(len(out))]


def nearest_indices(query: np.ndarray, pool: np.ndarray, k: int) -> list[list[int]]:
    """Top-k pool rows by cosine similarity for each query row, the most similar placed last
    (nearest to the query in the prompt, as Liu et al. 2022 found best)."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True).clip(1e-12)
    p = pool / np.linalg.norm(pool, axis=1, keepdims=True).clip(1e-12)
    sims = q @ p.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [row[::-1].tolist() for row in top]


@SELECTORS.register("random")
def _random(train: Split, ev: Split, k: int, seed: int, embed: Any) -> list[list[int]]:
    return [random_indices(train.labels, k, seed)] * len(ev)


@SELECTORS.register("balanced")
def _balanced(train: Split, ev: Split, k: int, seed: int, embed: Any) -> list[list[int]]:
    return [balanced_indices(train.labels, k, seed)] * len(ev)


@SELECTORS.register("nearest")
def _nearest(train: Split, ev: Split, k: int, seed: int, embed: Any) -> list[list[int]]:
    def joined(s: Split) -> list[str]:
        return s.texts if s.pairs is None else [f"{t} {p}" for t, p in zip(s.texts, s.pairs)]

    return nearest_indices(embed(joined(ev)), embed(joined(train)), k)


def minilm_embedder(backbone: str = "minilm-l6", batch_size: int = 64, max_length: int = 128) -> Callable[[list[str]], np.ndarray]:
    """Mean-pooled last hidden states of a sentence encoder (all-MiniLM-L6-v2 by default)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = resolve(backbone)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out)

    return embed
