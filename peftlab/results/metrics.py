"""Classification metrics as pure functions of label ids (scikit-learn underneath)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Every label in ``label_names`` appears in the report, even one never predicted (its
    precision is then 0 rather than a warning), so rows line up across methods.
    """
    labels = list(range(len(label_names)))
    rep = classification_report(
        y_true, y_pred, labels=labels, target_names=label_names, output_dict=True, zero_division=0
    )
    per_class = {
        name: {k: float(rep[name][k]) if k != "support" else int(rep[name][k])
               for k in ("precision", "recall", "f1-score", "support")}
        for name in label_names
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def majority_class(train_labels: np.ndarray) -> int:
    """The most frequent training label (ties to the lowest id): the baseline's only answer."""
    return int(np.bincount(train_labels).argmax())


def is_collapsed(y_pred: np.ndarray, num_labels: int) -> bool:
    """True when every prediction is the same class although the task has several."""
    return num_labels > 1 and len(np.unique(y_pred)) == 1


#: what "best" can be judged by (``train.select_metric``, and ``search.metric`` besides eval_loss):
#: attributes of both EpochRecord and RunResult, higher is better
SELECT_METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


def selection_value(record: Any, metric: str) -> float | None:
    """``record``'s value of the selection metric (an EpochRecord, RunResult or seed summary)."""
    if metric not in SELECT_METRICS:
        raise ValueError(f"unknown selection metric {metric!r}")
    return getattr(record, metric)


def never_predicted(confusion: list[list[int]], label_names: list[str]) -> list[str]:
    """Labels no evaluation example was predicted as (a zero column of the confusion matrix)."""
    if not confusion or len(confusion[0]) != len(label_names):
        return []
    return [n for j, n in enumerate(label_names) if not any(row[j] for row in confusion)]
