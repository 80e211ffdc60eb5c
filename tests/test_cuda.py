"""The CUDA paths (bf16/fp16 autocast training, QLoRA with a 4-bit base on the GPU).

Skipped where no CUDA device is visible (CI); run on a GPU machine.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_tiny_csvs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_tiny(tiny_bert, tmp_path, methods):
    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    write_tiny_csvs(tmp_path)
    cfg = validate_raw({
        "backbone": tiny_bert,
        "task": {"source": "csv", "train_file": str(tmp_path / "train.csv"), "eval_file": str(tmp_path / "eval.csv")},
        "methods": methods,
        "train": {"epochs": 4, "batch_size": 8, "max_length": 32},
        "output_dir": str(tmp_path / "run"),
    })
    return {r.name: r for r in run_experiment(cfg, quiet=True)}


def test_autocast_training_on_cuda(tiny_bert, tmp_path):
    res = run_tiny(tiny_bert, tmp_path, [{"method": "full", "lr": 3e-3}, {"method": "lora", "r": 4, "lr": 1e-2}])
    for name in ("full", "lora"):
        r = res[name]
        assert r.status == "ok", r.error
        assert r.environment["device"].startswith("cuda")
        assert r.memory_kind == "cuda_max_allocated" and r.peak_memory_bytes > 0
        losses = [e.train_loss for e in r.epochs]
        assert losses[-1] < losses[0], losses
        assert r.params.agree is True


def test_qlora_on_cuda(tiny_bert, tmp_path):
    pytest.importorskip("bitsandbytes")
    res = run_tiny(tiny_bert, tmp_path, [{"method": "qlora", "r": 4, "lr": 1e-2}])
    r = res["qlora"]
    assert r.status == "ok", r.error
    assert r.environment["device"].startswith("cuda")
    assert r.params.agree is True
    losses = [e.train_loss for e in r.epochs]
    assert losses[-1] < losses[0], losses
    saved = json.loads((tmp_path / "run" / "qlora" / "results.json").read_text())
    assert saved["status"] == "ok"
