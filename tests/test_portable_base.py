"""A saved adapter of an offline alias names its base by the model's hub id (not a path into this
machine's venv), peftlab reads that back as the alias's packaged copy offline, plain peft loads the
adapter onto a base the user passes, and base_fingerprint.json still refuses a wrong base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli, write_tiny_csvs
from method_table import _one_thread  # noqa: F401  (autouse: one intra-op thread)
from peftlab.backbones.loaders import ALIASES, HUB_IDS, alias_of, resolve

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["good drug really", "awful day the pain", "meh it was okay"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA run on the real minilm-l6 alias (its packaged copy, offline)."""
    root = tmp_path_factory.mktemp("portable")
    train, evalf = write_tiny_csvs(root, 24, 12)
    cfg = {"name": "portable", "backbone": "minilm-l6", "baseline": False, "output_dir": str(root / "run"),
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "lora", "r": 2, "lr": 3e-2}],
           "train": {"epochs": 1, "batch_size": 12, "max_length": 16, "num_threads": 1}}
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", str(root / "c.yaml"), "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "run"


def test_every_alias_has_a_hub_id_and_reads_back_as_itself():
    assert sorted(HUB_IDS) == ALIASES.names()
    assert HUB_IDS["minilm-l6"] == MINILM and HUB_IDS["smollm2-135m"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert all(alias_of(hub_id) == alias for alias, hub_id in HUB_IDS.items())
    assert alias_of("/some/folder") == "/some/folder" and alias_of("org/other-model") == "org/other-model"


def test_adapter_records_the_hub_id_and_peftlab_keeps_the_alias(run: Path):
    adapter = run / "lora" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == MINILM
    assert json.loads((adapter / "base_fingerprint.json").read_text())["base"] == "minilm-l6"
    proc = run_cli("predict", str(run / "lora"), *TEXTS)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == len(TEXTS), proc.stderr[-2000:]


def test_a_copied_adapter_alone_composes_and_merges_on_the_packaged_base(run: Path, tmp_path: Path):
    """No results.json around it: the base comes from adapter_config.json's hub id, offline."""
    copy = shutil.copytree(run / "lora" / "adapter", tmp_path / "elsewhere" / "adapter")
    proc = run_cli("compose", "0.5*a", "-a", f"a={copy}", "--merge", "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "m" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == MINILM
    record = json.loads((tmp_path / "m" / "adapter" / "peftlab_compose.json").read_text())
    assert record["fingerprint"]["base_model"] == "minilm-l6"
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_a_wrong_base_is_still_refused(run: Path, tiny_bert: str, tmp_path: Path):
    copy = shutil.copytree(run / "lora" / "adapter", tmp_path / "adapter")
    proc = run_cli("compose", "a", "-a", f"a={copy}", "--base", tiny_bert, "--merge", "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "trained on base 'minilm-l6'" in proc.stderr and not (tmp_path / "m").exists()


def test_plain_peft_loads_the_adapter_onto_a_base_the_user_passes(run: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftlab.runners.predict import load_predictor

    copy = shutil.copytree(run / "lora" / "adapter", tmp_path / "adapter")
    ours = load_predictor(run / "lora", merge=False)
    base = AutoModelForSequenceClassification.from_pretrained(resolve("minilm-l6"), num_labels=len(ours.labels))
    model = PeftModel.from_pretrained(base, str(copy)).eval()
    tok = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    with torch.no_grad():
        probs = torch.softmax(model(**tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")).logits, -1)
    torch.testing.assert_close(probs, torch.from_numpy(ours.probabilities(TEXTS)), atol=1e-5, rtol=0)
