"""Preflight estimates: parameter memory exact, totals within the stated factor of the measured peak,
``run`` stops when a method will not fit and names settings that would, ``peftlab plan`` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from conftest import FAMILIES, make_tokenizer, run_cli, tiny_config
from peftlab.config import validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.methods import METHODS
from peftlab.estimate.params import arch_spec, base_weight_bytes, count_params
from peftlab.estimate.plan import STATED_FACTOR, USABLE, base_bytes, check_fits, format_plan, make_plan
from peftlab.runners.experiment import run_experiment


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_memory_exact(family):
    conf = tiny_config(family)
    model = AutoModelForSequenceClassification.from_config(conf)
    spec = arch_spec(model.config)
    assert base_bytes(spec, "fp32") == base_weight_bytes(model) == 4 * count_params(model)[1]
    assert base_bytes(spec, "bf16") == base_weight_bytes(model.to(torch.bfloat16))
    assert base_bytes(spec, "4-bit") < base_bytes(spec, "8-bit") < base_bytes(spec, "bf16")


def raw(backbone: str, train: Path, evalf: Path, out: Path, methods: list, **train_kw) -> dict:
    return {"backbone": backbone, "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
            "methods": methods, "output_dir": str(out),
            "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False, **train_kw}}


def test_plan_trainable_matches_the_live_model(tiny_bert, tiny_csv, tmp_path):
    cfg = validate_raw(raw(tiny_bert, *tiny_csv, tmp_path / "o", [{"method": "lora", "r": 4}, "full", "prompt_tuning"]))
    plan = make_plan(cfg)
    for mp in plan.methods:
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
        prepared = METHODS.get(mp.method).prepare(model, cfg.method(mp.label), arch_spec(model.config))
        assert (mp.trainable, mp.total) == count_params(prepared)
        assert mp.optimizer_bytes == 8 * mp.trainable and mp.grads_bytes == 4 * mp.trainable


@pytest.fixture(scope="module")
def wider_bert(tmp_path_factory) -> str:
    """A BERT big enough (about 3M parameters) that its weights and optimizer show in the process's memory."""
    path = tmp_path_factory.mktemp("wider-bert")
    conf = BertConfig(vocab_size=8000, hidden_size=192, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=768, max_position_embeddings=64, pad_token_id=0, num_labels=3)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(conf).save_pretrained(str(path))
    make_tokenizer(path, with_cls=True)
    return str(path)


def test_estimate_within_stated_factor_of_measured_peak(wider_bert, tiny_csv, tmp_path):
    cfg = validate_raw(raw(wider_bert, *tiny_csv, tmp_path / "o", [{"method": "full", "lr": 1e-4}], batch_size=16))
    for r in run_experiment(cfg, quiet=True)[1:]:
        stored = json.loads((tmp_path / "o" / r.name / "results.json").read_text())
        est, peak = stored["details"]["memory_estimate_bytes"], stored["peak_memory_bytes"]
        assert peak / STATED_FACTOR <= est <= peak * STATED_FACTOR, (r.name, est, peak)
    assert "memory: estimated" in (tmp_path / "o" / "report.md").read_text()  # the report shows estimate vs peak


def test_run_stops_when_it_will_not_fit_and_names_what_would(tiny_bert, tiny_csv, tmp_path, monkeypatch):
    import peftlab.estimate.plan as plan_mod

    cfg = validate_raw(raw(tiny_bert, *tiny_csv, tmp_path / "o", ["full"], batch_size=64, max_length=64))
    need = make_plan(cfg).methods[0].new_bytes
    monkeypatch.setattr(plan_mod, "device_memory", lambda c: ("cpu", int(need * 0.6), 0))
    with pytest.raises(PeftlabError, match=r"^method full needs about .* MB but cpu has .* MB free; would fit: "
                                           r".*train\.batch_size=\d+ with train\.grad_accum=\d+"):
        run_experiment(cfg, quiet=True)
    assert not (tmp_path / "o").exists()  # stopped before anything was written or loaded
    monkeypatch.setattr(plan_mod, "device_memory", lambda c: ("cpu", int(need * 2), 0))
    check_fits(cfg)  # silent when it fits


def test_each_row_is_planned_on_its_own_backbone(tiny_bert, wider_bert, tiny_csv, tmp_path, monkeypatch):
    """A row naming its own backbone is planned (and memory-checked) with that backbone's shapes, like a
    config of that backbone alone; rows without one use the experiment's (issue 20)."""
    import peftlab.estimate.plan as plan_mod

    rows = [{"method": "full", "name": "full_small"}, {"method": "full", "name": "full_wide", "backbone": wider_bert},
            {"method": "lora", "r": 4, "name": "lora_wide", "backbone": wider_bert}]
    cfg = validate_raw(raw(tiny_bert, *tiny_csv, tmp_path / "o", rows))
    plan = make_plan(cfg)
    by_label = {mp.label: mp for mp in plan.methods}
    assert set(by_label) == {"full_small", "full_wide", "lora_wide"} and not plan.skipped
    for row in rows:
        own = row.get("backbone", tiny_bert)
        alone = make_plan(validate_raw(raw(own, *tiny_csv, tmp_path / "alone", [
            {k: v for k, v in row.items() if k != "backbone"}]))).methods[0]
        mp = by_label[row["name"]]
        assert mp.backbone == own
        assert (mp.base, mp.trainable, mp.total, mp.weights_bytes, mp.activation_bytes, mp.new_bytes) == (
            alone.base, alone.trainable, alone.total, alone.weights_bytes, alone.activation_bytes, alone.new_bytes)
    small, wide = by_label["full_small"], by_label["full_wide"]
    assert wide.total > 5 * small.total and wide.new_bytes > small.new_bytes
    table = format_plan(plan, cfg).splitlines()
    assert "backbone" in table[1].split()
    assert [ln.split()[:2] for ln in table[2:5]] == [["full_small", tiny_bert], ["full_wide", wider_bert],
                                                     ["lora_wide", wider_bert]]
    # room for the small row but not the wide one: the guard stops on the wide row's own numbers
    free = int((small.new_bytes + wide.new_bytes) / 2 / USABLE)
    monkeypatch.setattr(plan_mod, "device_memory", lambda c: ("cpu", free, 0))
    with pytest.raises(PeftlabError, match=r"^method full_wide \(on .*wider-bert.*\) needs about "):
        check_fits(cfg)
    check_fits(validate_raw(raw(tiny_bert, *tiny_csv, tmp_path / "o", rows[:1])))  # the small row alone fits


def test_plan_cli_prints_every_method(tiny_bert, tiny_csv, tmp_path):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw(tiny_bert, *tiny_csv, tmp_path / "o", ["full", "lora", "qlora"])))
    proc = run_cli("plan", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "base fp32" in lines[1] and "4-bit" in lines[1] and "optimizer" in lines[1] and "activations" in lines[1]
    assert [ln.split()[0] for ln in lines[2:5]] == ["full", "lora", "qlora"]
    assert "4-bit" in lines[4].split()[5:7] and not (tmp_path / "o").exists()


def test_a_run_resolves_each_backbone_config_once(wider_bert, tiny_bert, tiny_csv, tmp_path, monkeypatch):
    """A row's backbone config is read once per run, with the task's labels, and passed on: the
    memory plan and every row's precision get that one object (issue 20). The preflight reads its
    own, before the data (and so the label count) is known."""
    import peftlab.estimate.plan as plan_mod
    import peftlab.runners.experiment as exp

    reads: list[str] = []
    seen: list[object] = []
    real_read, real_precision = exp.load_hf_config, exp.train_precision

    def read(bb, num_labels=None):
        reads.append(bb.name)
        return real_read(bb, num_labels=num_labels)

    def precision(tcfg, model_config=None, *args, **kwargs):
        seen.append(model_config())
        return real_precision(tcfg, None, *args, **kwargs)

    monkeypatch.setattr(exp, "load_hf_config", read)
    monkeypatch.setattr(plan_mod, "load_hf_config", read)
    monkeypatch.setattr(exp, "train_precision", precision)
    rows = [{"method": "linear_probe", "name": "a"}, {"method": "linear_probe", "name": "b"},
            {"method": "linear_probe", "name": "c", "backbone": wider_bert}]
    results = run_experiment(validate_raw(raw(tiny_bert, *tiny_csv, tmp_path / "o", rows, memory_check=True)),
                             quiet=True)
    assert [r.status for r in results[1:]] == ["ok"] * 3
    assert reads == [tiny_bert, wider_bert, tiny_bert, wider_bert]  # the preflight's, then the run's
    assert seen[0] is seen[1] and seen[2] is not seen[0] and seen[0].num_labels == 3
