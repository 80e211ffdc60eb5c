"""Guards: each fires on a constructed case and stays silent on a clean one.

Newly initialised backbone weights (a checkpoint missing an encoder layer), a peft task_type
that is not sequence classification, an image-only method on a text task, and evaluation
inputs that also occur in the training split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from conftest import write_csv
from peftlab.config import validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.infra.guards import NEWLY_INITIALISED, newly_initialised, overlap_count
from peftlab.runners.experiment import preflight, run_experiment
from peftlab.tasks.base import Split


def config(backbone: str, train: Path, evalf: Path, out: Path, **method) -> dict:
    return {
        "backbone": backbone,
        "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
        "methods": [{"method": "linear_probe", "lr": 1e-2, "epochs": 1, **method}],
        "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False},
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def broken_bert(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny BERT checkpoint with its second encoder layer deleted (as a mismatched checkpoint would be)."""
    out = tmp_path_factory.mktemp("broken-bert")
    shutil.copytree(tiny_bert, out, dirs_exist_ok=True)
    tensors = {k: v for k, v in load_file(str(out / "model.safetensors")).items() if ".layer.1." not in k}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)


def test_newly_initialised_ignores_the_head_only():
    info = {"missing_keys": {"classifier.weight", "classifier.bias"}, "mismatched_keys": []}
    assert newly_initialised(info, ["classifier"]) == []
    info = {"missing_keys": ["classifier.weight", "bert.encoder.layer.1.output.dense.weight"],
            "mismatched_keys": [("bert.pooler.dense.weight", (4, 4), (8, 8))]}
    assert newly_initialised(info, ["classifier"]) == ["bert.encoder.layer.1.output.dense.weight",
                                                        "bert.pooler.dense.weight"]


def test_newly_initialised_backbone_warns_and_flags(broken_bert, tiny_bert, tiny_csv, tmp_path, capsys):
    train, evalf = tiny_csv
    (bad,) = [r for r in run_experiment(validate_raw(config(broken_bert, train, evalf, tmp_path / "bad")), quiet=True)
              if r.method != "majority_class"]
    err = capsys.readouterr().err
    assert "WARNING" in err and "NOT in the checkpoint" in err and "layer.1" in err
    assert NEWLY_INITIALISED in bad.flags and bad.details["newly_initialised_count"] == 16
    assert NEWLY_INITIALISED in (tmp_path / "bad" / "comparison.md").read_text()
    assert NEWLY_INITIALISED in json.loads((tmp_path / "bad" / "linear_probe" / "results.json").read_text())["flags"]
    (good,) = [r for r in run_experiment(validate_raw(config(tiny_bert, train, evalf, tmp_path / "good")), quiet=True)
               if r.method != "majority_class"]
    assert "WARNING" not in capsys.readouterr().err
    assert NEWLY_INITIALISED not in good.flags and "newly_initialised" not in good.details


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", "SEQ_2_SEQ_LM", "token_cls"])
def test_wrong_task_type_refused_naming_the_field(tiny_bert, tmp_path, task_type):
    raw = config(tiny_bert, tmp_path / "t.csv", tmp_path / "e.csv", tmp_path / "o")
    raw["methods"] = ["full", {"method": "lora", "task_type": task_type}]
    with pytest.raises(PeftlabError, match=r"^config error: methods\[1\]\.task_type: .*sequence classification"):
        validate_raw(raw)


def test_seq_cls_task_type_accepted(tiny_bert, tmp_path):
    raw = config(tiny_bert, tmp_path / "t.csv", tmp_path / "e.csv", tmp_path / "o")
    raw["methods"] = [{"method": "lora", "task_type": "SEQ_CLS"}, {"method": "ia3"}]
    assert [m.method for m in validate_raw(raw).methods] == ["lora", "ia3"]


def test_image_only_method_refused_on_a_text_task(tiny_bert, tiny_csv, tmp_path):
    raw = config(tiny_bert, *tiny_csv, tmp_path / "o")
    raw["methods"] = [{"method": "coop"}]
    with pytest.raises(PeftlabError, match="coop.*image task"):
        preflight(validate_raw(raw))
    raw["methods"] = [{"method": "lora"}]
    preflight(validate_raw(raw))  # the clean case passes


def test_overlap_count_text_and_pairs():
    train = Split(texts=["a b", "c d", "e f"], labels=np.array([0, 1, 0]))
    assert overlap_count(train, Split(texts=["c d", "x", "a b", "a b"], labels=np.zeros(4, dtype=np.int64))) == 3
    assert overlap_count(train, Split(texts=["x", "y"], labels=np.zeros(2, dtype=np.int64))) == 0
    ptrain = Split(texts=["p", "p"], labels=np.array([0, 1]), pairs=["h1", "h2"])
    peval = Split(texts=["p", "p", "q"], labels=np.zeros(3, dtype=np.int64), pairs=["h2", "h3", "h1"])
    assert overlap_count(ptrain, peval) == 1  # same premise with another hypothesis is a new input


def test_train_eval_overlap_warned_and_recorded(tiny_bert, tmp_path, capsys):
    from conftest import tiny_rows

    train_rows = [(f"{t} day", l) for t, l in tiny_rows(30, 1)]
    eval_rows = [(f"{t} pain sleep", l) for t, l in tiny_rows(12, 2)]
    train = write_csv(tmp_path / "train.csv", train_rows)
    clean = write_csv(tmp_path / "clean.csv", eval_rows)
    leaky = write_csv(tmp_path / "leaky.csv", eval_rows + train_rows[:5])
    results = run_experiment(validate_raw(config(tiny_bert, train, leaky, tmp_path / "leaky")), quiet=True)
    assert "5 of 17 evaluation examples also occur in the training split" in capsys.readouterr().err
    for r in results:
        stored = json.loads((tmp_path / "leaky" / r.name / "results.json").read_text())
        assert stored["details"]["train_eval_overlap"] == 5 and "train_eval_overlap" in stored["flags"]
    # the report says it once for the task, not once per row (nor in each row's health cell)
    for name in ("report.md", "comparison.md"):
        md = (tmp_path / "leaky" / name).read_text(encoding="utf-8")
        said = [ln for ln in md.splitlines() if "train_eval_overlap: 5 of 17 evaluation inputs" in ln]
        assert len(said) == 1, name
        assert not [ln for ln in md.splitlines() if ln.startswith("| ") and "train_eval_overlap" in ln], name
    assert "evaluation inputs also occur" not in "".join((tmp_path / "leaky" / "report.md").read_text().split("### ")[1:])
    results = run_experiment(validate_raw(config(tiny_bert, train, clean, tmp_path / "clean")), quiet=True)
    assert "evaluation examples also occur" not in capsys.readouterr().err
    assert all(r.details["train_eval_overlap"] == 0 and "train_eval_overlap" not in r.flags for r in results)
