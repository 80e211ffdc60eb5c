"""RunResult: the one schema every runner writes (fine-tuning, in-context, zero-shot)."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

import peftlab
from peftlab.infra.errors import PeftlabError, first_line
from peftlab.infra.io import atomic_write_json, atomic_write_text, read_json
from peftlab.infra.threads import available_cores

#: the method (and row name) of the majority-class reference row every text and image run starts with
BASELINE_METHOD = "majority_class"

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
#: one line per evaluation example (per demonstration seed, for rows scored under several), beside results.json
PREDICTIONS_FILE = "predictions.jsonl"
#: the folder, beside results.json, that holds a row's trained module (what ``peftlab predict`` reloads)
ADAPTER_DIR = "adapter"


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float | None = None
    eval_loss: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None


class ParamCounts(BaseModel):
    trainable: int
    total: int
    percent_trainable: float
    derived_trainable: int | None = None
    derived_total: int | None = None
    #: True/False when a closed form exists for this architecture, None otherwise
    agree: bool | None = None


class Timing(BaseModel):
    wall_s: float
    train_s: float = 0.0
    eval_s: float = 0.0
    train_examples_per_s: float | None = None
    eval_examples_per_s: float | None = None


class RunResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    #: "incomplete" is written when a method starts and replaced when it ends: a killed run never looks done
    status: Literal["ok", "failed", "incomplete"] = "ok"
    error: str | None = None
    name: str
    method: str
    method_params: dict[str, Any] = Field(default_factory=dict)
    task: str
    backbone: str
    seed: int
    labels: list[str] = Field(default_factory=list)
    n_train: int = 0
    n_eval: int = 0
    epochs: list[EpochRecord] = Field(default_factory=list)
    accuracy: float | None = None
    macro_f1: float | None = None
    per_class: dict[str, dict[str, float]] = Field(default_factory=dict)
    confusion_matrix: list[list[int]] = Field(default_factory=list)
    params: ParamCounts | None = None
    timing: Timing | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None  # "rss" (CPU process) or "cuda_max_allocated"
    adapter_bytes: int | None = None
    adapter_path: str | None = None
    #: health flags: "collapsed", "nan_loss", "params_unchanged", "params_mismatch"
    flags: list[str] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)
    #: method-specific diagnostics (zero-shot: accuracy per template, worst class, template search);
    #: ``report_lines`` (Markdown lines) are printed under the comparison table
    details: dict[str, Any] = Field(default_factory=dict)
    #: rows run over several seeds (in-context demonstrations): accuracy/macro_f1 are the means,
    #: these the sample standard deviations and the per-seed values
    seeds: list[int] = Field(default_factory=list)
    accuracy_std: float | None = None
    macro_f1_std: float | None = None
    seed_accuracy: list[float] = Field(default_factory=list)
    seed_macro_f1: list[float] = Field(default_factory=list)
    #: the loss weight per label the training used (train.class_weight: balanced); None: unweighted
    class_weights: dict[str, float] | None = None
    #: the metric "best" is judged by in the report (train.select_metric): accuracy or macro_f1
    select_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    #: what the row computed in ("fp32", "bf16", "fp16" autocast) and why: "asked for", "CUDA",
    #: the CPU probe's two figures, PEFTLAB_CPU_PRECISION, or the method's reason to stay fp32
    precision: str | None = None
    precision_reason: str | None = None
    #: the machine's 1-minute load average when the run started; above the core count, other jobs
    #: competed for the CPU and the timings are slower than the method alone would be
    load_avg_start: float | None = None

    def write(self, directory: Path) -> None:
        atomic_write_json(directory / RESULTS_FILE, self.model_dump(mode="json"))


def read_result(path: Path) -> RunResult:
    data = read_json(path)
    if isinstance(data, dict) and int(data.get("schema_version", 0)) > SCHEMA_VERSION:
        raise PeftlabError(f"{path}: written by a newer peftlab (schema {data['schema_version']})")
    try:
        return RunResult.model_validate(data)
    except ValueError as exc:
        raise PeftlabError(f"{path}: not a peftlab result ({first_line(exc)})") from None


@dataclass(frozen=True)
class Predictions:
    """A row's answer on every evaluation example: what paired tests between rows need.

    Accuracy alone cannot say whether two rows differ beyond chance on the same examples; the
    per-example answers can (peftlab.report.paired). Arrays are aligned: entry ``j`` is example
    ``index[j]`` of the eval split. A row scored in several passes (in-context demonstration
    seeds) holds one entry per example and pass, ``seed`` naming the pass; otherwise ``seed`` is None.
    """

    labels: list[str]
    index: np.ndarray  # (m,) int64: position in the eval split
    gold: np.ndarray  # (m,) int64 label ids
    pred: np.ndarray  # (m,) int64 label ids
    probs: np.ndarray  # (m, labels) float64; NaN where the row has no probability (a vote that named no label)
    seed: np.ndarray | None = None  # (m,) int64, or None for a single pass
    #: (m, labels) the probabilities before contextual calibration (in-context rows with
    #: ``calibrate: true``), so the report can show calibration before and after; else None
    raw_probs: np.ndarray | None = None

    @classmethod
    def of(cls, labels: list[str], gold: np.ndarray, preds: list[np.ndarray], probs: list[np.ndarray],
           seeds: list[int] | None = None, raw_probs: list[np.ndarray] | None = None) -> Predictions:
        """One or several passes over the same eval split; ``seeds`` names them (needed for more
        than one); ``raw_probs``: each pass's probabilities before calibration, when calibrated."""
        n = len(gold)
        if len(preds) > 1 and (seeds is None or len(seeds) != len(preds)):
            raise ValueError("several passes need one seed each")

        def stacked(qs: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([np.asarray(q, dtype=np.float64).reshape(n, len(labels)) for q in qs])

        return cls(labels=list(labels), index=np.tile(np.arange(n, dtype=np.int64), len(preds)),
                   gold=np.tile(np.asarray(gold, dtype=np.int64), len(preds)),
                   pred=np.concatenate([np.asarray(p, dtype=np.int64) for p in preds]),
                   probs=stacked(probs),
                   seed=None if len(preds) == 1 else np.repeat(np.asarray(seeds, dtype=np.int64), n),
                   raw_probs=None if raw_probs is None else stacked(raw_probs))

    @classmethod
    def from_logits(cls, labels: list[str], gold: np.ndarray, logits: np.ndarray) -> Predictions:
        """A trained row's single pass: the argmax and the softmax of its eval logits (in float64)."""
        from scipy.special import softmax

        logits = np.asarray(logits, dtype=np.float64)
        return cls.of(labels, gold, [logits.argmax(-1)], [softmax(logits, axis=-1)])

    @classmethod
    def pooled(cls, parts: list[Predictions]) -> Predictions:
        """Several runs' answers on the same examples as one multi-pass row (a method over its
        seeds): per-example correctness becomes the share of passes right, as for demonstration seeds."""
        seeds = [p.seed if p.seed is not None else np.full(len(p.index), k, dtype=np.int64) for k, p in enumerate(parts)]
        if len(parts) == 1:
            return parts[0]
        raw = [p.raw_probs for p in parts]
        return cls(labels=parts[0].labels, index=np.concatenate([p.index for p in parts]),
                   gold=np.concatenate([p.gold for p in parts]), pred=np.concatenate([p.pred for p in parts]),
                   probs=np.concatenate([p.probs for p in parts]), seed=np.concatenate(seeds),
                   raw_probs=None if any(r is None for r in raw) else np.concatenate(raw))

    def correct_per_example(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(example indices ascending, their gold ids, the fraction of passes that got each right):
        0/1 for a single pass, the mean over demonstration seeds otherwise (the row's accuracy is
        that mean too)."""
        order = np.unique(self.index)
        pos = np.searchsorted(order, self.index)
        hits = np.bincount(pos, weights=(self.pred == self.gold).astype(np.float64), minlength=len(order))
        passes = np.bincount(pos, minlength=len(order))
        gold = np.empty(len(order), dtype=np.int64)
        gold[pos] = self.gold
        return order, gold, hits / passes


def write_predictions(directory: Path, preds: Predictions) -> Path:
    """``directory/predictions.jsonl``, written atomically like results.json (umask, no half file).

    Each line: ``index``, ``seed`` (only for several passes), ``gold`` and ``predicted`` as label
    ids and names, and ``probs`` per label name (null where unknown); a calibrated in-context row
    adds ``probs_uncalibrated`` (the same, before contextual calibration). Floats keep every
    digit, so reading gives back the same arrays.
    """
    def per_label(values: np.ndarray) -> dict[str, float | None]:
        return {n: None if math.isnan(v) else float(v) for n, v in zip(preds.labels, values)}

    lines = []
    for j in range(len(preds.index)):
        g, p = int(preds.gold[j]), int(preds.pred[j])
        line: dict[str, Any] = {"index": int(preds.index[j])}
        if preds.seed is not None:
            line["seed"] = int(preds.seed[j])
        line.update(gold=g, predicted=p, gold_label=preds.labels[g], predicted_label=preds.labels[p],
                    probs=per_label(preds.probs[j]))
        if preds.raw_probs is not None:
            line["probs_uncalibrated"] = per_label(preds.raw_probs[j])
        lines.append(json.dumps(line, ensure_ascii=False, allow_nan=False))
    path = Path(directory) / PREDICTIONS_FILE
    atomic_write_text(path, "".join(x + "\n" for x in lines))
    return path


def read_predictions(path: Path) -> Predictions:
    """The arrays :func:`write_predictions` wrote; a malformed file is a one-line PeftlabError."""
    path = Path(path)
    try:
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        labels = list(rows[0]["probs"]) if rows else []
        seeded = bool(rows) and "seed" in rows[0]

        def table(key: str) -> np.ndarray:
            return np.array([[np.nan if r[key][n] is None else r[key][n] for n in labels] for r in rows],
                            dtype=np.float64).reshape(len(rows), len(labels))

        return Predictions(
            labels=labels,
            index=np.array([r["index"] for r in rows], dtype=np.int64),
            gold=np.array([r["gold"] for r in rows], dtype=np.int64),
            pred=np.array([r["predicted"] for r in rows], dtype=np.int64),
            probs=table("probs"),
            seed=np.array([r["seed"] for r in rows], dtype=np.int64) if seeded else None,
            raw_probs=table("probs_uncalibrated") if rows and "probs_uncalibrated" in rows[0] else None,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise PeftlabError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None


def git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str, dropout: str | None = None) -> dict[str, Any]:
    """Versions and hardware, so every number says where it came from; ``dropout``: the training's
    dropout sampler and why (peftlab.backbones.dropout), when it trained any."""
    import peft
    import torch
    import transformers

    return {
        "peftlab": peftlab.__version__,
        "git": git_hash(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "cores": available_cores(),
        "platform": platform.platform(),
        **({"dropout": dropout} if dropout else {}),
    }
