"""``peftlab compose`` end to end: adapters from a real (tiny) peftlab run, a lambda sweep scored
on the config's validation split, the merged best model, and one-line refusals (exit 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import run_cli
from method_table import _one_thread  # noqa: F401  (autouse: one intra-op thread)


@pytest.fixture(scope="module")
def run_dir(tiny_bert, tmp_path_factory) -> Path:
    from conftest import write_tiny_csvs
    from peftlab.config import load_config
    from peftlab.runners.experiment import run_experiment

    root = tmp_path_factory.mktemp("compose_run")
    write_tiny_csvs(root, 36, 15, eval_name="val.csv")
    config = {
        "name": "tiny_compose", "backbone": tiny_bert, "baseline": False,
        "task": {"source": "csv", "train_file": str(root / "train.csv"), "eval_file": str(root / "val.csv"),
                 "label_names": ["negative", "neutral", "positive"]},
        "methods": [{"method": "lora", "name": "la", "r": 4, "lr": 3e-2},
                    {"method": "lora", "name": "lb", "r": 4, "lr": 1e-2},
                    {"method": "ia3", "lr": 3e-2}],
        "train": {"epochs": 15, "batch_size": 12, "max_length": 24, "num_threads": 1},
        "output_dir": str(root / "run"),
    }
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    results = run_experiment(load_config(root / "c.yaml"), quiet=True)
    assert all(r.status == "ok" for r in results)
    return root


def test_sweep_picks_best_on_validation_and_merges(run_dir: Path):
    run, out = run_dir / "run", run_dir / "out"
    proc = run_cli("compose", "(1 - lambda)*la + lambda*lb", "--adapters", f"la={run / 'la'},lb={run / 'lb'}",
                   "--sweep", "lambda=0:1:0.5", "--eval", str(run_dir / "c.yaml"), "--merge", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(r["lambda"]) for r in rows] == [0.0, 0.5, 1.0]
    # lambda=0 is la itself and lambda=1 is lb itself: their scores equal the runs' own eval scores
    for lam, name in ((0.0, "la"), (1.0, "lb")):
        own = json.loads((run / name / "results.json").read_text())["accuracy"]
        got = next(float(r["accuracy"]) for r in rows if float(r["lambda"]) == lam)
        assert got == pytest.approx(own, abs=1e-6)
    best = max(rows, key=lambda r: (float(r["accuracy"]), float(r["macro_f1"])))
    assert f"best lambda = {float(best['lambda']):g}" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").stat().st_size > 1000
    assert (out / "sweep" / "comparison.md").is_file() and (out / "sweep" / "lambda=0.5" / "results.json").is_file()
    record = json.loads((out / "adapter" / "peftlab_compose.json").read_text())
    assert record["variables"] == {"lambda": float(best["lambda"])}
    assert record["fingerprint"]["labels"] == ["negative", "neutral", "positive"]
    merged = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert merged.config.id2label[0] == "negative"
    with torch.no_grad():
        assert torch.isfinite(merged(**tok(["good drug"], return_tensors="pt")).logits).all()


def test_cli_refusals_are_one_line(run_dir: Path, tmp_path: Path):
    run = run_dir / "run"
    proc = run_cli("compose", "la + ia3", "-a", f"la={run / 'la'}", "-a", f"ia3={run / 'ia3'}", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "different methods: la is lora, ia3 is ia3" in proc.stderr
    assert not (tmp_path / "x").exists()
