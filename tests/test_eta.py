"""The training-time estimate: pure pace arithmetic, printed early in a run and stored in its result."""

from __future__ import annotations

import json

import pytest

from peftlab.config import validate_raw
from peftlab.infra.eta import TIMED_STEPS, WARMUP_STEPS, estimate_total_s, eta_line, remaining_s
from peftlab.runners.experiment import run_experiment


def test_remaining_time_is_the_average_pace():
    assert remaining_s(3.0, 3, 10) == pytest.approx(10.0)
    assert remaining_s(0.0, 0, 10) == 0.0
    assert "about 300 s (5.0 min)" in eta_line("full", 300.0, 40)


def test_estimate_skips_the_warm_up_steps():
    """Two slow warm-up steps (5 s, 3 s) then about 1 s per step: 10 steps take 11 + 5 * 1 = 16 s.
    Averaging the first three steps, as before, would have said 3 s per step: 9 + 7 * 3 = 30 s."""
    assert WARMUP_STEPS == 2
    steps = [5.0, 3.0, 1.0, 1.1, 0.9]
    assert estimate_total_s(steps, 10) == pytest.approx(11.0 + 1.0 * 5)  # median of the steady ones: 1.0
    assert estimate_total_s([5.0, 3.0, 1.0, 9.0, 1.0], 10) == pytest.approx(19.0 + 1.0 * 5)  # one slow save ignored
    assert estimate_total_s([5.0, 3.0], 10) is None  # nothing timed after the warm-up yet
    assert estimate_total_s(steps, 5) == pytest.approx(11.0)  # done: what it took


def test_estimate_printed_before_training_ends_and_stored(tiny_bert, tiny_csv, tmp_path, capsys):
    train, evalf = tiny_csv
    raw = {"backbone": tiny_bert, "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "lora", "r": 2}], "output_dir": str(tmp_path / "o"),
           "train": {"epochs": 2, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                     "num_threads": 1}}
    run_experiment(validate_raw(raw), quiet=False)
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "training will take about" in ln)
    assert f"timed over {TIMED_STEPS} of 12 steps after {WARMUP_STEPS} warm-up steps" in line
    assert err.index(line) < err.index("lora epoch 1/2: train loss")  # before the first epoch's metrics
    details = json.loads((tmp_path / "o" / "lora" / "results.json").read_text())["details"]
    assert details["train_time_estimate_s"] > 0
