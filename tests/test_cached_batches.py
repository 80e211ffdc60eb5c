"""Training on in-memory tensors: batch boundaries, and batch norm with a one-example tail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from peftlab.config import TrainConfig
from peftlab.runners.cached import batch_bounds, fit_tensors


@pytest.mark.parametrize(("n", "bs", "expected"), [
    (8, 4, [(0, 4), (4, 8)]),
    (9, 4, [(0, 4), (4, 9)]),  # the lone ninth example joins the batch before it
    (10, 4, [(0, 4), (4, 8), (8, 10)]),
    (1, 4, [(0, 1)]),  # a one-example set is still one batch
    (5, 1, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),  # batch size 1 asked for: kept
])
def test_batch_bounds(n: int, bs: int, expected: list[tuple[int, int]]) -> None:
    assert batch_bounds(n, bs) == expected
    assert sum(e - s for s, e in batch_bounds(n, bs)) == n


def test_batch_norm_trains_when_the_last_batch_would_hold_one_example() -> None:
    """A pooled 1x1 batch norm raises on a one-example batch in train mode; 9 items at batch 4 must train."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.randn(9, 3, 8, 8), np.array([0, 1] * 4 + [0])
    before = model[2].running_mean.clone()
    tcfg = TrainConfig(epochs=1, batch_size=4, checkpoints=False)
    out = fit_tensors(model, model, x, y, x[:4], y[:4], 1e-2, tcfg, torch.device("cpu"))
    assert out.train_examples == 9
    assert not torch.equal(before, model[2].running_mean)


def test_linear_probe_eval_throughput_counts_the_feature_pass(tiny_bert, tiny_csv, tmp_path, monkeypatch) -> None:
    """The eval split's backbone pass is part of the linear probe's evaluation: with that pass made
    to take at least 0.4 s, eval s covers it and eval ex/s is at most 24 / 0.4, each eval example
    counted once however many epochs reused its cached features."""
    import time

    from peftlab.config import validate_raw
    from peftlab.runners import cached
    from peftlab.runners.experiment import run_experiment

    real = cached.head_inputs

    def slow_eval_pass(model, head, feats, *args, **kwargs):
        if len(feats) == 24:  # the eval split (training has 48)
            time.sleep(0.4)
        return real(model, head, feats, *args, **kwargs)

    monkeypatch.setattr(cached, "head_inputs", slow_eval_pass)
    train, evalf = tiny_csv
    raw = {"backbone": tiny_bert, "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "linear_probe", "lr": 1e-2, "epochs": 5}], "output_dir": str(tmp_path / "o"),
           "baseline": False,
           "train": {"epochs": 1, "batch_size": 16, "max_length": 32, "device": "cpu", "checkpoints": False}}
    (result,) = run_experiment(validate_raw(raw), quiet=True)
    t = result.timing
    assert result.status == "ok" and result.n_eval == 24
    assert t.eval_s >= 0.4 and t.eval_examples_per_s <= 24 / 0.4
    assert t.eval_examples_per_s * t.eval_s == pytest.approx(24)  # counted once, not once per epoch
    assert t.train_s < t.wall_s - 0.4  # the eval pass is no longer training time
