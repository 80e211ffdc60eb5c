"""Composed and merged adapters remember peftlab's fingerprint of their base, and are refused on
another base (or composed with adapters of another base) unless --force-base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_compose_cli import run_dir  # noqa: F401  (a fixture: a tiny run with LoRA rows la and lb)
from transformers import AutoModelForSequenceClassification

from peftlab.infra.fingerprint import BASE_KEYS, FINGERPRINT_FILE

cli = run_cli


def _fp(path: Path) -> dict:
    return {k: json.loads((path / FINGERPRINT_FILE).read_text())[k] for k in BASE_KEYS}


@pytest.fixture(scope="module")
def world(tiny_bert, run_dir, tmp_path_factory) -> Path:  # noqa: F811
    """The compose CLI test's run (LoRA rows la, lb) and a base of the same architecture, other weights."""
    torch.manual_seed(5)
    other = AutoModelForSequenceClassification.from_config(AutoModelForSequenceClassification.from_pretrained(tiny_bert).config)
    shutil.copytree(tiny_bert, run_dir / "other_bert", dirs_exist_ok=True)
    other.save_pretrained(str(run_dir / "other_bert"))
    return run_dir


def test_composed_and_merged_adapters_record_the_base(world, tmp_path):
    run = world / "run"
    base = _fp(run / "la" / "adapter")
    proc = cli("compose", "0.5*la + 0.5*lb", "-a", f"la={run / 'la'},lb={run / 'lb'}", "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _fp(tmp_path / "c") == base
    # a composed adapter is itself a compose input, and its merge records the base it went into
    proc = cli("compose", "c - 0.5*lb", "-a", f"c={tmp_path / 'c'},lb={run / 'lb'}", "--merge", "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _fp(tmp_path / "m" / "adapter") == base and _fp(tmp_path / "m") == base


def test_plain_peft_inputs_get_the_fingerprint_of_the_base_they_name(tiny_bert, tmp_path):
    from test_compose import make

    from peftlab.backbones.loaders import load_classifier, load_tokenizer
    from peftlab.config import BackboneConfig
    from peftlab.infra.fingerprint import base_fingerprint

    make(tiny_bert, tmp_path / "a", seed=1)
    make(tiny_bert, tmp_path / "b", seed=2)
    assert not (tmp_path / "a" / FINGERPRINT_FILE).exists()
    proc = cli("compose", "a + b", "-a", f"a={tmp_path / 'a'},b={tmp_path / 'b'}", "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    bb = BackboneConfig(name=tiny_bert)
    want = base_fingerprint(load_classifier(bb, ["LABEL_0", "LABEL_1"], load_tokenizer(bb)), tiny_bert)
    assert _fp(tmp_path / "c") == {k: want[k] for k in BASE_KEYS}


def test_composed_adapter_on_another_base_is_refused_unless_forced(world, tmp_path):
    run = world / "run"
    args = ["compose", "la + lb", "-a", f"la={run / 'la'},lb={run / 'lb'}", "--merge", "--base", str(world / "other_bert")]
    refused = cli(*args, "--out", str(tmp_path / "m"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "trained on base" in refused.stderr and "--force-base" in refused.stderr
    assert not (tmp_path / "m").exists()  # nothing half-written
    forced = cli(*args, "--force-base", "--out", str(tmp_path / "m"))
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert _fp(tmp_path / "m") != _fp(run / "la" / "adapter")  # records what it was merged into


def test_inputs_from_different_bases_are_refused_unless_forced(world, tmp_path):
    run = world / "run"
    # lb's copy, as if trained on another checkpoint found under the same name
    shutil.copytree(run / "lb", tmp_path / "run" / "lb")
    fp = json.loads((tmp_path / "run" / "lb" / "adapter" / FINGERPRINT_FILE).read_text())
    (tmp_path / "run" / "lb" / "adapter" / FINGERPRINT_FILE).write_text(json.dumps({**fp, "embedding_sha256": "0" * 64}))
    args = ["compose", "la + lb", "-a", f"la={run / 'la'},lb={tmp_path / 'run' / 'lb'}"]
    refused = cli(*args, "--out", str(tmp_path / "c"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "different base models" in refused.stderr and not (tmp_path / "c").exists()
    assert cli(*args, "--force-base", "--out", str(tmp_path / "c")).returncode == 0


def test_a_moved_base_folder_is_still_the_same_base(world, tmp_path):
    """The fingerprints agree, so adapters whose runs name the base by different paths compose."""
    run = world / "run"
    shutil.copytree(run / "lb", tmp_path / "run" / "lb")
    result = json.loads((tmp_path / "run" / "lb" / "results.json").read_text())
    (tmp_path / "run" / "lb" / "results.json").write_text(json.dumps({**result, "backbone": str(tmp_path / "moved")}))
    proc = cli("compose", "la + lb", "-a", f"la={run / 'la'},lb={tmp_path / 'run' / 'lb'}", "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr[-2000:]
