"""Imbalanced tasks: train.class_weight (weighted loss), macro-F1 as the selection metric, and the
report naming classes a method never predicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from peftlab.config import SearchConfig, TrainConfig, validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.methods.lora import LoraParams
from peftlab.report import facts
from peftlab.report.collect import Row, RunDir
from peftlab.report.render_md import render_md
from peftlab.report.seeds import BEST, summarise, summary_markdown, versus_best
from peftlab.results import EpochRecord, RunResult
from peftlab.runners.batching import Features
from peftlab.runners.cached import fit_tensors
from peftlab.runners.lr_search import search_lr
from peftlab.runners.train import class_weights, training_loss


def test_balanced_weights_equal_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 30 + [1] * 6 + [2] * 4)
    expected = compute_class_weight("balanced", classes=np.unique(y), y=y)
    assert class_weights(y, "balanced") == pytest.approx(expected)
    assert class_weights(y, "none") is None
    gap = np.array([0] * 8 + [2] * 2)  # class 1 absent from training: two classes present
    w = class_weights(gap, "balanced")
    assert w[[0, 2]] == pytest.approx(compute_class_weight("balanced", classes=np.array([0, 2]), y=gap))


def test_weighted_loss_is_the_per_example_weighted_mean():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 2])
    w = np.array([0.5, 2.0, 2.0])
    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert training_loss(logits, labels, w).item() == pytest.approx((per * torch.tensor(w)[labels]).mean().item())
    assert training_loss(logits, labels, None).item() == pytest.approx(per.mean().item())
    one_class = torch.tensor([0] * 6)  # PyTorch's weight= mean would cancel the weight here; this does not
    assert training_loss(logits, one_class, w).item() == pytest.approx(0.5 * training_loss(logits, one_class, None).item())


def _imbalanced(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Two noisy Gaussian classes, 9:1: an unweighted head mostly predicts the majority."""
    g = torch.Generator().manual_seed(seed)
    y = np.array([0] * (9 * n // 10) + [1] * (n - 9 * n // 10))
    x = torch.randn(n, 4, generator=g) + torch.from_numpy(y).float()[:, None] * 0.8
    return x, y


def test_weighted_head_training_differs_and_recovers_the_minority():
    x, y = _imbalanced(200, 0)
    xe, ye = _imbalanced(200, 1)
    runs = {}
    for mode in ("none", "balanced"):
        torch.manual_seed(0)
        head = torch.nn.Linear(4, 2)
        tcfg = TrainConfig(epochs=20, batch_size=20, class_weight=mode, device="cpu")
        runs[mode] = fit_tensors(head, head, x, y, xe, ye, 0.05, tcfg, torch.device("cpu"))
    plain, weighted = runs["none"], runs["balanced"]
    assert plain.class_weights is None and weighted.class_weights == pytest.approx([200 / (2 * 180), 200 / (2 * 20)])
    assert weighted.epochs[0].train_loss != pytest.approx(plain.epochs[0].train_loss, rel=1e-3)
    assert weighted.epochs[-1].train_loss < weighted.epochs[0].train_loss  # it trains
    recall = [((o.logits.argmax(-1) == 1) & (ye == 1)).sum() / (ye == 1).sum() for o in (plain, weighted)]
    assert recall[1] > recall[0] and weighted.epochs[-1].macro_f1 > plain.epochs[-1].macro_f1


def test_weighted_text_run_records_weights_and_changes_the_loss(tiny_bert, tmp_path: Path):
    """The text loop (full) and the cached head (linear_probe) on a 3-class task made imbalanced."""
    from conftest import tiny_rows, write_csv

    from peftlab.runners.experiment import run_experiment

    rows = [r for i, r in enumerate(tiny_rows(90, 1)) if r[1] == "positive" or i % 4 == 0]
    counts = {lab: sum(1 for _, l in rows if l == lab) for lab in ("negative", "neutral", "positive")}
    assert counts["positive"] > 2 * max(counts["negative"], counts["neutral"]) > 0
    train = write_csv(tmp_path / "train.csv", rows)
    evalf = write_csv(tmp_path / "eval.csv", tiny_rows(24, 2))
    out = {}
    for mode in ("none", "balanced"):
        raw = {"backbone": tiny_bert, "baseline": False, "output_dir": str(tmp_path / mode),
               "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf),
                        "label_names": ["negative", "neutral", "positive"]},
               "methods": [{"method": "full", "lr": 1e-3}, {"method": "linear_probe", "lr": 1e-2, "epochs": 3}],
               "train": {"epochs": 2, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                         "num_threads": 1, "class_weight": mode}}
        out[mode] = {r.name: r for r in run_experiment(validate_raw(raw), quiet=True)}
    n = len(rows)
    expected = {lab: n / (3 * c) for lab, c in counts.items()}
    for name in ("full", "linear_probe"):
        plain, weighted = out["none"][name], out["balanced"][name]
        assert plain.class_weights is None and weighted.class_weights == pytest.approx(expected)
        assert weighted.epochs[0].train_loss != pytest.approx(plain.epochs[0].train_loss, rel=1e-4)
        assert all(math.isfinite(e.train_loss) for e in weighted.epochs)
    stored = RunResult.model_validate_json((tmp_path / "balanced" / "full" / "results.json").read_text())
    assert stored.class_weights == pytest.approx(expected)


def test_class_weight_refused_for_lm_lora():
    raw = {"backbone": "x", "task": {"source": "csv", "train_file": "t.csv"},
           "methods": ["full", {"method": "lm_lora"}], "train": {"class_weight": "balanced"}}
    with pytest.raises(PeftlabError, match=r"train.class_weight: balanced does not apply to methods\[1\]"):
        validate_raw(raw)


def test_lr_search_by_macro_f1_picks_another_value_than_by_accuracy():
    """lr 1e-3 predicts the majority (high accuracy, low macro-F1); 1e-2 is balanced."""
    items = [{"input_ids": [1, 2], "labels": i % 2} for i in range(20)]
    recs = {1e-3: EpochRecord(epoch=1, eval_loss=0.5, accuracy=0.9, macro_f1=0.47),
            1e-2: EpochRecord(epoch=1, eval_loss=0.6, accuracy=0.8, macro_f1=0.7)}
    chosen = {m: search_lr(LoraParams(), SearchConfig(lr=[1e-3, 1e-2], metric=m), Features(items), 0, 4,
                           lambda p, tr, va: recs[p.lr])
              for m in ("accuracy", "macro_f1")}
    assert chosen["accuracy"]["chosen"] == 1e-3 and chosen["macro_f1"]["chosen"] == 1e-2
    assert chosen["macro_f1"]["trials"][1]["score"] == pytest.approx(0.3)


def _result(name: str, seed: int, acc: float, f1: float, metric: str = "accuracy") -> RunResult:
    return RunResult(name=name, method="lora", task="t", backbone="b", seed=seed, accuracy=acc, macro_f1=f1,
                     select_metric=metric)


def test_best_by_macro_f1_differs_from_best_by_accuracy():
    runs = ([_result("majority_like", s, a, f) for s, (a, f) in enumerate([(0.90, 0.47), (0.91, 0.48)])]
            + [_result("balanced", s, a, f) for s, (a, f) in enumerate([(0.80, 0.70), (0.81, 0.72)])])
    sums = summarise(runs)
    assert versus_best(sums)["majority_like"] == BEST
    assert versus_best(sums, "macro_f1")["balanced"] == BEST
    by_f1 = [r.model_copy(update={"select_metric": "macro_f1"}) for r in runs]
    md = "\n".join(summary_markdown(by_f1))
    table = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    col = table[0].index("vs best (macro-F1)")
    assert {row[0]: row[col] for row in table[2:]}["balanced"] == "best"


def test_report_names_classes_never_predicted():
    labels = ["negative", "neutral", "positive"]
    never = RunResult(name="lora", method="lora", task="t", backbone="b", seed=0, labels=labels, accuracy=0.7,
                      confusion_matrix=[[5, 0, 1], [2, 0, 2], [1, 0, 9]])
    every = never.model_copy(update={"name": "full", "confusion_matrix": [[5, 1, 0], [1, 2, 1], [0, 1, 9]]})
    base = never.model_copy(update={"name": "majority_class", "method": "majority_class",
                                    "confusion_matrix": [[0, 0, 6], [0, 0, 4], [0, 0, 10]], "flags": ["collapsed"]})
    rows = [Row(result=r, run=RunDir(Path(".")), path=Path("."), label=r.name) for r in (base, never, every)]
    assert facts.health_notes(rows) == ["lora: never predicts neutral"]
    md = render_md(rows)
    assert "- lora: never predicts neutral" in md and md.count("never predicts neutral") == 2  # note + health cell
