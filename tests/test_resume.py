"""Resumable runs: a run killed anywhere and resumed ends with exactly the uninterrupted metrics.

In process, a save hook interrupts training right after its k-th checkpoint (mid-epoch step
checkpoints and epoch-end ones); in a subprocess, the real CLI is killed with SIGKILL at several
points. Either way the resumed results.json must equal an uninterrupted run's, number for number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli_process
from interrupts import run_until_checkpoint

from peftlab.config import validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.runners import train as train_mod
from peftlab.runners.checkpoint import complete_checkpoints
from peftlab.runners.experiment import run_experiment

#: everything of a result that training determines (timings and environment excluded)
METRIC_KEYS = ("accuracy", "macro_f1", "per_class", "confusion_matrix", "epochs", "flags", "params", "status")


def metrics(run_dir: Path, name: str) -> dict:
    r = json.loads((run_dir / name / "results.json").read_text())
    return {k: r[k] for k in METRIC_KEYS}


def raw_config(tiny_bert: str, tiny_csv, out: Path, **train) -> dict:
    train_file, eval_file = tiny_csv
    return {
        "name": "resume",
        "backbone": tiny_bert,
        "task": {"source": "csv", "train_file": str(train_file), "eval_file": str(eval_file)},
        "methods": [{"method": "full", "lr": 3e-3}, {"method": "lora", "r": 4, "lr": 1e-2, "dropout": 0.1},
                    # PiSSA's residual base is recomputed on resume; LoRA+'s optimizer groups are restored
                    {"method": "lora", "name": "lora_family", "r": 4, "lr": 3e-3, "dropout": 0.1, "init": "pissa",
                     "use_dora": True, "lora_plus_ratio": 4}],
        "train": {"epochs": 3, "batch_size": 8, "max_length": 32, "checkpoint_every": 2, "device": "cpu",
                  "num_threads": 1, **train},  # one thread: the same float order in and out of process
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def reference(tiny_bert, tmp_path_factory) -> Path:
    from conftest import write_tiny_csvs

    root = tmp_path_factory.mktemp("ref")
    files = write_tiny_csvs(root)
    run_experiment(validate_raw(raw_config(tiny_bert, files, root / "run")), quiet=True)
    return root


def test_same_config_twice_gives_identical_metrics(tiny_bert, reference, tmp_path):
    files = (reference / "train.csv", reference / "eval.csv")
    run_experiment(validate_raw(raw_config(tiny_bert, files, tmp_path / "again")), quiet=True)
    for name in ("full", "lora", "lora_family"):
        assert metrics(tmp_path / "again", name) == metrics(reference / "run", name)


# 6 steps/epoch, every 2: saves 1,2 mid-epoch 1, 3 at its end, 4 mid-epoch 2
@pytest.mark.parametrize("name, stop_after", [("lora", 3), ("lora", 4), ("lora_family", 4)])
def test_interrupted_then_resumed_equals_uninterrupted(tiny_bert, reference, tmp_path, monkeypatch, name, stop_after):
    files = (reference / "train.csv", reference / "eval.csv")
    cfg = validate_raw(raw_config(tiny_bert, files, tmp_path / "run"))
    out = run_until_checkpoint(monkeypatch, train_mod, cfg, name, stop_after)
    full_before = (out / "full" / "results.json").read_text()
    run_experiment(cfg, quiet=True)  # the same config on the same dir: continues
    assert (out / "full" / "results.json").read_text() == full_before  # finished method not re-run
    assert metrics(out, name) == metrics(reference / "run", name)
    assert not complete_checkpoints(out / name)  # cleared once the adapter is saved
    assert (out / "comparison.md").is_file()


def test_resume_flag_refuses_a_different_config(tiny_bert, reference, tmp_path):
    files = (reference / "train.csv", reference / "eval.csv")
    raw = raw_config(tiny_bert, files, tmp_path / "run", epochs=1)
    with pytest.raises(PeftlabError, match="no run to resume"):
        run_experiment(validate_raw(raw), quiet=True, resume="resume")
    run_experiment(validate_raw(raw), quiet=True)
    raw["train"]["epochs"] = 2
    with pytest.raises(PeftlabError, match="different config"):
        run_experiment(validate_raw(raw), quiet=True, resume="resume")


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "peftlab", "run", str(config), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"run ended before the kill point: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("kill point never reached")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_at_several_points_then_resume(tiny_bert, reference, tmp_path):
    files = (reference / "train.csv", reference / "eval.csv")
    raw = raw_config(tiny_bert, files, tmp_path / "run", checkpoint_every=1)  # how often never changes the numbers
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"

    def steps(name: str) -> list[int]:
        return [int(p.name.split("-")[1]) for p in complete_checkpoints(out / name)]

    # 1: during the first method; 2: during the second, after the first finished
    _kill_when(_start(config), lambda: any(s >= 4 for s in steps("full")))
    _kill_when(_start(config), lambda: any(s >= 8 for s in steps("lora")))
    assert json.loads((out / "lora" / "results.json").read_text())["status"] == "incomplete"
    done = run_cli_process("run", str(config), "-q", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("full", "lora"):
        assert metrics(out, name) == metrics(reference / "run", name)


def test_nan_loss_stops_the_method_and_keeps_the_last_good_checkpoint(tiny_bert, reference, tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification

    real_forward, calls = BertForSequenceClassification.forward, {"train": 0}

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        if self.training and out.loss is not None:
            calls["train"] += 1
            if calls["train"] >= 4:  # the 4th training step diverges
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(BertForSequenceClassification, "forward", forward)
    files = (reference / "train.csv", reference / "eval.csv")
    raw = raw_config(tiny_bert, files, tmp_path / "run", checkpoint_every=1)
    raw["methods"] = [{"method": "full", "lr": 3e-3}]
    results = run_experiment(validate_raw(raw), quiet=True)
    r = results[-1]
    assert r.status == "failed" and r.flags == ["nan_loss"]
    assert "NaN" in (r.error or "") and "checkpoint" in (r.error or "")
    kept = complete_checkpoints(tmp_path / "run" / "full")
    assert [p.name for p in kept][-1] == "step-00000003"  # steps 1-3 were good
    assert not (tmp_path / "run" / "full" / "adapter").exists()  # nothing saved from a diverged model


def test_checkpoint_tensors_are_copied_by_name_and_must_all_match(tmp_path):
    import torch
    from safetensors.torch import save_file

    from peftlab.runners.checkpoint import _copy_saved

    save_file({"a": torch.full((2,), 3.0, dtype=torch.float64), "b": torch.ones(1)}, str(tmp_path / "t.safetensors"))
    own = {"a": torch.zeros(2), "b": torch.zeros(1)}
    _copy_saved(tmp_path, "t.safetensors", "weights", own, "unused")
    assert own["a"].dtype == torch.float32 and torch.equal(own["a"], torch.full((2,), 3.0)) and own["b"].item() == 1
    with pytest.raises(PeftlabError, match=r"checkpoint .*: its buffers do not match"):
        _copy_saved(tmp_path, "t.safetensors", "weights", {"a": own["a"]}, "its buffers do not match")
