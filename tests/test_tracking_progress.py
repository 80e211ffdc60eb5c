"""Live feedback (progress bars, epoch lines, quiet mode) and optional TensorBoard/MLflow logging."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from peftlab.infra.errors import PeftlabError
from peftlab.results import EpochRecord, ParamCounts, RunResult, Timing
from peftlab.runners.progress import say, track
from peftlab.infra.tracking import check_trackers, log_result


def result() -> RunResult:
    return RunResult(
        name="lora", method="lora", method_params={"method": "lora", "r": 4, "lr": 0.01}, task="t", backbone="b",
        seed=3, accuracy=0.75, macro_f1=0.7,
        epochs=[EpochRecord(epoch=1, train_loss=1.0, eval_loss=0.9, accuracy=0.5, macro_f1=0.4),
                EpochRecord(epoch=2, train_loss=0.6, eval_loss=0.7, accuracy=0.75, macro_f1=0.7)],
        params=ParamCounts(trainable=10, total=100, percent_trainable=10.0),
        timing=Timing(wall_s=2.0, train_s=1.5, eval_s=0.25, train_examples_per_s=40.0),
    )


def test_bar_shows_eta_rate_and_metric_unless_quiet(capsys):
    seen = list(track(range(4), 40, "lora eval", quiet=False, sizes=[10] * 4))
    say(False, "lora epoch 1/1: acc 0.5000")
    err = capsys.readouterr().err
    assert seen == [0, 1, 2, 3]
    assert "lora eval" in err and "40/40" in err and "ex/s" in err and "<" in err and "acc 0.5000" in err
    list(track(range(4), 4, "quiet one", quiet=True))
    say(True, "nothing")
    assert capsys.readouterr().err == ""


def test_unknown_tracker_is_a_config_error():
    from peftlab.config import validate_raw

    with pytest.raises(PeftlabError, match=r"train\.log_to: unknown tracker 'tensorbord'; did you mean 'tensorboard'"):
        validate_raw({"backbone": "x", "task": {"name": "drugreview"}, "methods": ["full"],
                      "train": {"log_to": ["tensorbord"]}})


def test_missing_tracker_package_fails_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` raise ImportError
    with pytest.raises(PeftlabError) as err:
        check_trackers(["mlflow"])
    assert "'mlflow' package is not installed" in str(err.value) and "\n" not in str(err.value)


def test_mlflow_gets_curves_metrics_and_params(monkeypatch, tmp_path: Path):
    """A minimal stand-in for mlflow records what peftlab sends (mlflow itself is optional)."""
    calls: list[tuple] = []
    fake = types.ModuleType("mlflow")

    class _Run:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            calls.append(("end",))

    fake.set_tracking_uri = lambda uri: calls.append(("uri", uri))
    fake.get_experiment_by_name = lambda name: None
    fake.create_experiment = lambda name, artifact_location: calls.append(("experiment", name)) or "7"
    fake.start_run = lambda experiment_id, run_name: (calls.append(("start", experiment_id, run_name)), _Run())[1]
    fake.log_params = lambda p: calls.append(("params", p))
    fake.log_metrics = lambda m, step=None: calls.append(("metrics", m, step))
    fake.set_tags = lambda t: calls.append(("tags", t))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    check_trackers(["mlflow"])
    log_result(["mlflow"], tmp_path, "exp", result())
    assert calls[0] == ("uri", f"sqlite:///{tmp_path.resolve()}/mlflow.db") and calls[1] == ("experiment", "exp")
    assert calls[2] == ("start", "7", "lora") and calls[-1] == ("end",)
    per_epoch = [(c[2], c[1]["eval/accuracy"]) for c in calls if c[0] == "metrics" and c[2] is not None]
    assert per_epoch == [(1, 0.5), (2, 0.75)]
    final = next(c[1] for c in calls if c[0] == "metrics" and c[2] is None)
    assert final["final/accuracy"] == 0.75 and final["params/trainable"] == 10.0
    params = next(c[1] for c in calls if c[0] == "params")
    assert params["method.r"] == "4" and params["seed"] == "3"


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed (optional)")
def test_tensorboard_event_files(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_result(["tensorboard"], tmp_path, "exp", result())
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "lora"))
    acc.Reload()
    assert [(s.step, s.value) for s in acc.Scalars("eval/accuracy")] == [(1, 0.5), (2, 0.75)]
    assert acc.Scalars("final/macro_f1")[0].value == pytest.approx(0.7)


def test_live_run_shows_bars_and_epoch_lines(tiny_bert: str, tiny_csv, tmp_path: Path, capsys):
    """A real (tiny) run, not quiet: train and eval bars, the epoch's metrics line, and trackers."""
    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    trackers = ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    train, evalf = tiny_csv
    cfg = validate_raw({
        "name": "live", "backbone": tiny_bert,
        "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
        "methods": [{"method": "lora", "r": 2, "lr": 1e-2}, {"method": "linear_probe", "lr": 1e-2, "epochs": 2}],
        "train": {"epochs": 1, "batch_size": 16, "max_length": 32, "device": "cpu", "log_to": trackers},
        "output_dir": str(tmp_path / "run"), "baseline": False,
    })
    run_experiment(cfg, quiet=False)
    err = capsys.readouterr().err
    for piece in ("lora epoch 1/1", "lora eval 1/1", "ex/s", "lora epoch 1/1: train loss", "linear_probe features (train)",
                  "linear_probe head epochs", "linear_probe epoch 2/2: train loss"):
        assert piece in err, piece
    assert (tmp_path / "run" / "report.html").is_file()
    if trackers:
        assert list((tmp_path / "run" / "tensorboard" / "lora").glob("events.out.tfevents.*"))
