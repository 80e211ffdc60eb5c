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


@dataclass
class TaskData:
    name: str
    label_names: list[str]
    train: Split
    eval: Split

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.train.pairs is not None
