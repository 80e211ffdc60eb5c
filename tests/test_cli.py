"""End to end through the real CLI on a tiny random BERT and tiny CSV data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli_process as cli


@pytest.fixture(scope="module")
def tiny_run(tiny_bert, tmp_path_factory) -> Path:
    from conftest import write_tiny_csvs

    root = tmp_path_factory.mktemp("e2e")
    write_tiny_csvs(root)
    config = {
        "name": "tiny",
        "backbone": tiny_bert,
        "task": {"source": "csv", "train_file": str(root / "train.csv"), "eval_file": str(root / "eval.csv")},
        "methods": [
            {"method": "full", "lr": 3e-3},
            {"method": "partial", "top_k": 1, "lr": 3e-3},
            {"method": "linear_probe", "lr": 5e-2, "epochs": 4},
            {"method": "lora", "r": 4, "lr": 1e-2},
            # the LoRA family's options together (issue 20): saved converted, reloaded by predict
            {"method": "lora", "name": "lora_family", "r": 4, "lr": 3e-3, "init": "pissa", "use_dora": True,
             "use_rslora": True, "lora_plus_ratio": 4, "target_modules": "all-linear"},
        ],
        "train": {"epochs": 2, "batch_size": 8, "max_length": 32},
        "output_dir": str(root / "run"),
    }
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    proc = cli("run", str(root / "c.yaml"), "-q", "train.epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| lora |" in proc.stdout and "| majority_class |" in proc.stdout
    return root / "run"


def test_run_writes_every_result(tiny_run: Path):
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 3  # the override is what got recorded
    rows = list(csv.DictReader((tiny_run / "comparison.csv").open()))
    assert [r["method"] for r in rows] == ["majority_class", "full", "partial", "linear_probe", "lora", "lora_family"]
    for name in ["full", "partial", "linear_probe", "lora", "lora_family"]:
        r = json.loads((tiny_run / name / "results.json").read_text())
        assert r["status"] == "ok"
        assert r["params"]["agree"] is True
        assert r["params"]["trainable"] == r["params"]["derived_trainable"]
        expected_epochs = 4 if name == "linear_probe" else 3
        assert [e["epoch"] for e in r["epochs"]] == list(range(1, expected_epochs + 1))
        cm = np.array(r["confusion_matrix"])
        assert cm.sum() == r["n_eval"] == 24
        assert r["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        assert r["accuracy"] == pytest.approx(r["epochs"][-1]["accuracy"])
        assert set(r["per_class"]) == {"negative", "neutral", "positive"}
        assert r["peak_memory_bytes"] > 0 and r["timing"]["train_examples_per_s"] > 0
        assert r["adapter_bytes"] > 0 and (tiny_run / r["adapter_path"]).is_dir()
        assert r["environment"]["torch"] and r["seed"] == 0
    assert (tiny_run / "lora" / "adapter" / "adapter_config.json").is_file()
    base = json.loads((tiny_run / "majority_class" / "results.json").read_text())
    assert base["accuracy"] == pytest.approx(1 / 3) and "collapsed" in base["flags"]


def test_predict_cli(tiny_run: Path):
    proc = cli("predict", str(tiny_run / "lora"), "good drug really", "awful day", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    assert [x["text"] for x in lines] == ["good drug really", "awful day"]
    for x in lines:
        assert x["label"] in {"negative", "neutral", "positive"}
        assert sum(x["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert x["label"] == max(x["probabilities"], key=x["probabilities"].get)


def test_predict_reloads_the_lora_family_row_with_its_score(tiny_run: Path, tmp_path: Path):
    """The PiSSA + DoRA + rsLoRA + LoRA+ + all-linear row, reloaded from its saved (converted) adapter,
    scores the eval set exactly as the run did."""
    with (tiny_run.parent / "eval.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    f = tmp_path / "eval.txt"
    f.write_text("".join(r["text"] + "\n" for r in rows))
    proc = cli("predict", str(tiny_run / "lora_family"), "--file", str(f), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = [json.loads(x)["label"] for x in proc.stdout.strip().splitlines()]
    result = json.loads((tiny_run / "lora_family" / "results.json").read_text())
    assert np.mean([p == r["label"] for p, r in zip(labels, rows)]) == pytest.approx(result["accuracy"])


def test_predict_file_and_bad_dir(tiny_run: Path, tmp_path: Path):
    f = tmp_path / "in.txt"
    f.write_text("good\n\nbad drug\n")
    proc = cli("predict", str(tiny_run / "full"), "--file", str(f))
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 2
    bad = cli("predict", str(tmp_path), "x")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a method folder" in bad.stderr
