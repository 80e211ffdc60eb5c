"""Config validation: bad values fail with one line naming the field, exit code 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import run_cli_process
from peftlab.config import load_config, validate_raw
from peftlab.infra.errors import PeftlabError

GOOD = {
    "backbone": "minilm-l6",
    "task": {"source": "builtin", "name": "drugreview"},
    "methods": [{"method": "full"}, {"method": "lora", "r": 4}, "linear_probe"],
    "train": {"epochs": 1},
}


def write(tmp_path: Path, raw: object) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw, encoding="utf-8")
    return p


def test_good_config_and_defaults():
    cfg = validate_raw(GOOD)
    assert [m.label for m in cfg.methods] == ["full", "lora", "linear_probe"]
    assert cfg.methods[1].r == 4 and cfg.methods[1].lr == 1e-3  # LoRA's searched default
    assert cfg.backbone.name == "minilm-l6" and cfg.backbone.trust_remote_code is False


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"methods": [{"method": "lora", "r": 0}]}, "methods[0].r"),
        ({"methods": [{"method": "full", "lr": -1e-3}]}, "methods[0].lr"),
        ({"methods": [{"method": "full", "lr": float("nan")}]}, "methods[0].lr"),
        ({"methods": [{"method": "lroa"}]}, "did you mean 'lora'"),
        ({"methods": [{"method": "lora", "rank": 8}]}, "methods[0].rank: unknown key"),
        ({"methods": []}, "methods"),
        ({"methods": [{"method": "lora"}, {"method": "lora"}]}, "duplicate row names"),
        ({"train": {"epochs": "three"}}, "train.epochs"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"batch_size": -2}}, "train.batch_size"),
        ({"train": {"learning_rate": 1}}, "train.learning_rate: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"task": {"source": "csv"}}, "train_file is required"),
        ({"task": {"source": "hf"}}, "hf_id is required"),
        ({"task": {"source": "ftp", "name": "x"}}, "task.source"),
        ({"methods": [{"method": "partial", "top_k": 0}]}, "methods[0].top_k"),
        ({"methods": [{"method": "lora", "dropout": 1.5}]}, "methods[0].dropout"),
        ({"methods": [{"lr": 1e-3}]}, "'method' key"),
        # the LoRA family's options (issue 20)
        ({"methods": [{"method": "lora", "target_modules": "all"}]}, "methods[0].target_modules: a list of"),
        ({"methods": [{"method": "lora", "lora_plus_ratio": 0.5}]}, "methods[0].lora_plus_ratio"),
        ({"methods": [{"method": "lora", "init": "kaiming"}]}, "methods[0].init"),
        ({"methods": [{"method": "lora", "use_dora": "maybe"}]}, "methods[0].use_dora"),
        ({"methods": [{"method": "lora", "init": "loftq"}]}, "init 'loftq': LoftQ initialises A and B against a quantised"),
        ({"methods": [{"method": "qlora", "init": "loftq"}]}, "init 'loftq': not supported yet"),
        ({"methods": [{"method": "qlora", "init": "pissa"}]}, "init 'pissa': PiSSA rewrites the base weights"),
        ({"methods": [{"method": "qlora", "init": "olora"}]}, "init 'olora': OLoRA rewrites the base weights"),
    ],
)
def test_bad_values_name_the_field(patch, field):
    raw = {**GOOD, **patch}
    with pytest.raises(PeftlabError) as err:
        validate_raw(raw)
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_overrides_by_index_and_by_name(tmp_path):
    p = write(tmp_path, GOOD)
    cfg = load_config(p, ["train.epochs=2", "methods.lora.r=16", "methods.0.lr=1e-3", "backbone.revision=main"])
    assert cfg.train.epochs == 2 and cfg.methods[1].r == 16 and cfg.methods[0].lr == 1e-3
    assert cfg.backbone.revision == "main"
    with pytest.raises(PeftlabError, match="no list item named"):
        load_config(p, ["methods.ia4.r=2"])
    with pytest.raises(PeftlabError, match="key=value"):
        load_config(p, ["train.epochs"])


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(PeftlabError, match="malformed YAML"):
        load_config(write(tmp_path, "methods: [full\nbackbone: x:"))
    with pytest.raises(PeftlabError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(PeftlabError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli_process(*args, timeout=120)


def test_validate_cli_exit_codes(tmp_path, tiny_csv):
    train, ev = tiny_csv
    raw = {**GOOD, "task": {"source": "csv", "train_file": str(train), "eval_file": str(ev)}}
    ok = run_cli("validate", str(write(tmp_path, raw)))
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("validate", str(write(tmp_path, raw)), "task.text_column=review")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "task.text_column" in lines[0] and "'review'" in lines[0]
    rank0 = run_cli("validate", str(write(tmp_path, raw)), "methods.lora.r=0")
    assert rank0.returncode == 2 and rank0.stderr.count("\n") == 1 and "methods[1].r" in rank0.stderr
    loftq = run_cli("validate", str(write(tmp_path, raw)), "methods.lora.init=loftq")
    assert loftq.returncode == 2 and loftq.stderr.count("\n") == 1 and "methods[1]: init 'loftq'" in loftq.stderr
