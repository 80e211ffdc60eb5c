"""The in-memory form of a task: two labelled splits of (text, optional text pair)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # int64 label ids
    pairs: list[str] | None = None  # second text for sentence-pair tasks (NLI hypothesis)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: np.ndarray) -> "Split":
        return Split(
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
        )


def drop_eval_duplicates(train: Split, ev: Split) -> tuple[Split, int]:
    """``ev`` without the examples whose input (text, or text pair) also occurs in ``train``, and
    how many were dropped.

    An example seen in training measures memory, not generalisation, and inflates every row's
    accuracy alike; the builtin tasks' loaders drop them (user data is only flagged: it is theirs).
    """
    seen = set(zip(train.texts, train.pairs if train.pairs is not None else [None] * len(train)))
    keep = [i for i, x in enumerate(zip(ev.texts, ev.pairs if ev.pairs is not None else [None] * len(ev)))
            if x not in seen]
    return (ev if len(keep) == len(ev) else ev.take(np.asarray(keep, dtype=np.int64))), len(ev) - len(keep)


@dataclass
class TaskData:
    name: str
    label_names: list[str]
    train: Split
    eval: Split
    #: evaluation examples dropped because their input also occurs in training (builtin tasks)
    eval_duplicates_dropped: int = 0

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.train.pairs is not None
