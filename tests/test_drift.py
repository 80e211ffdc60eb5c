"""Linear CKA (peftlab.estimate.drift): the properties the comparison column relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftlab.estimate.drift import linear_cka


def test_cka_of_features_with_themselves_is_one() -> None:
    x = np.random.default_rng(0).normal(size=(64, 16))
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_cka_invariant_to_rotation_and_isotropic_scaling() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(x, 3.5 * x @ q) == pytest.approx(1.0)
    y = rng.normal(size=(80, 7))
    assert linear_cka(x @ q * 0.1, y) == pytest.approx(linear_cka(x, y))


def test_cka_of_independent_features_is_near_zero() -> None:
    rng = np.random.default_rng(2)
    assert linear_cka(rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))) < 0.02


def test_cka_rejects_mismatched_inputs_and_handles_constant_features() -> None:
    with pytest.raises(ValueError):
        linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))
    assert linear_cka(np.ones((10, 3)), np.random.default_rng(3).normal(size=(10, 3))) == 0.0


def test_encoder_rows_record_their_drift_and_the_table_shows_it(tiny_bert, tmp_path) -> None:
    """full moves the backbone (CKA < 1), linear_probe never touches it (CKA 1); the comparison
    says both, and a row without the record (the baseline) says "-"."""
    import json

    from conftest import write_tiny_csvs

    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    train, evalf = write_tiny_csvs(tmp_path)
    raw = {"backbone": tiny_bert, "output_dir": str(tmp_path / "out"),
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "full", "lr": 5e-3}, {"method": "linear_probe", "lr": 1e-2}],
           "train": {"epochs": 2, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                     "num_threads": 1}}
    rows = {r.name: r for r in run_experiment(validate_raw(raw), quiet=True)}
    assert rows["linear_probe"].details["drift"]["cka"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < rows["full"].details["drift"]["cka"] < 1.0 - 1e-6
    assert rows["full"].details["drift"]["n"] == 24
    saved = json.loads((tmp_path / "out" / "full" / "results.json").read_text())
    assert saved["details"]["drift"] == rows["full"].details["drift"]
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "CKA to base" in md
    assert "drift_cka" in (tmp_path / "out" / "comparison.csv").read_text().splitlines()[0]

    off = {**raw, "output_dir": str(tmp_path / "off"), "methods": [{"method": "full", "lr": 5e-3}],
           "train": {**raw["train"], "drift": False}}
    assert "drift" not in run_experiment(validate_raw(off), quiet=True)[-1].details


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_drift_is_measured_for_prompt_prefix_and_adapter_methods(tiny_backbones, tmp_path, family) -> None:
    """Virtual tokens (prompt / p-tuning), a key/value prefix and inserted adapters all get a CKA
    in (0, 1]: the pooling lines up the input's own positions whatever the method prepends."""
    from conftest import write_tiny_csvs

    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    train, evalf = write_tiny_csvs(tmp_path, n_train=16, n_eval=12)
    methods = [{"method": "prompt_tuning", "lr": 3e-2, "num_virtual_tokens": 4},
               {"method": "p_tuning", "lr": 1e-2, "num_virtual_tokens": 4, "encoder_hidden_size": 16},
               {"method": "prefix_tuning", "lr": 3e-2, "num_virtual_tokens": 4},
               {"method": "lora", "lr": 1e-2, "r": 4, "alpha": 8}]
    if family == "bert":
        methods += [{"method": "houlsby", "lr": 1e-2, "bottleneck_size": 4}, {"method": "ia3", "lr": 3e-2}]
    raw = {"backbone": tiny_backbones[family], "baseline": False, "output_dir": str(tmp_path / "out"),
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": methods,
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                     "num_threads": 1}}
    for r in run_experiment(validate_raw(raw), quiet=True):
        assert r.status == "ok", (r.name, r.error)
        assert 0.0 < r.details["drift"]["cka"] <= 1.0 + 1e-9 and r.details["drift"]["n"] == 12, r.name


def test_lm_loss_of_an_unchanged_model_equals_the_base(tmp_path) -> None:
    """The same weights give the same reference loss; LoRA at its initialisation (B = 0) changes
    nothing; moved weights change it."""
    from conftest import save_tiny_causal_lm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftlab.methods.lm_lora import LmLoraParams, add_lora
    from peftlab.runners.drift import reference_lm_loss, reference_text

    path = save_tiny_causal_lm(tmp_path / "lm", seed=1)
    tok = AutoTokenizer.from_pretrained(path)
    cpu = torch.device("cpu")
    model = AutoModelForCausalLM.from_pretrained(path)
    base = reference_lm_loss(model, tok, cpu, limit=64)
    assert base["tokens"] > 500 and np.isfinite(base["loss"]) and len(reference_text().encode()) <= 10_000
    again = reference_lm_loss(AutoModelForCausalLM.from_pretrained(path), tok, cpu, limit=64)
    assert again == base
    unchanged = add_lora(model, LmLoraParams(method="lm_lora", verbalizers={"positive": " good"}, r=2))
    assert reference_lm_loss(unchanged, tok, cpu, limit=64)["loss"] == pytest.approx(base["loss"], rel=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert reference_lm_loss(model, tok, cpu, limit=64)["loss"] != pytest.approx(base["loss"], rel=1e-4)


def test_lm_lora_rows_record_the_reference_loss(tmp_path) -> None:
    """An lm_lora row stores the loss before and after; a prompt-only icl row stores none (it
    changes nothing); the comparison shows the difference."""
    from conftest import save_tiny_causal_lm, write_tiny_csvs

    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    lm = save_tiny_causal_lm(tmp_path / "lm", seed=1)
    train, evalf = write_tiny_csvs(tmp_path, n_train=16, n_eval=8)
    icl = {"method": "icl", "backbone": lm, "example": "{text} so it was", "batch_size": 4,
           "verbalizers": {"positive": " good", "negative": " bad", "neutral": " meh"}}
    raw = {"backbone": lm, "output_dir": str(tmp_path / "out"), "baseline": False,
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{**icl, "name": "zero_shot"}, {**icl, "name": "lm_lora", "method": "lm_lora", "lr": 5e-2}],
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "num_threads": 1}}
    rows = {r.name: r for r in run_experiment(validate_raw(raw), quiet=True)}
    assert all(r.status == "ok" for r in rows.values()), {n: r.error for n, r in rows.items()}
    assert "lm_loss" not in rows["zero_shot"].details
    rec = rows["lm_lora"].details["lm_loss"]
    assert rec["tokens"] > 500 and rec["adapted"] != pytest.approx(rec["base"], rel=1e-6)
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "LM loss Δ" in md and f"{rec['adapted'] - rec['base']:+.4f}" in (tmp_path / "out" / "comparison.csv").read_text()


@pytest.mark.parametrize("tied", [False, True])
def test_classifier_rows_on_a_causal_backbone_record_the_reference_loss(tmp_path, tied) -> None:
    """A sequence-classification row on a causal LM checkpoint is scored as the LM it came from:
    its trunk + the pre-trained LM head (read from the checkpoint, or the tied embeddings). Its
    "base" loss is exactly the causal LM's own; the linear probe leaves it unchanged, LoRA and
    full fine-tuning move it. A checkpoint without an LM head (a classifier) records none."""
    from conftest import save_tiny_causal_lm, tiny_config, write_tiny_csvs
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from peftlab.config import validate_raw
    from peftlab.runners.drift import reference_lm_loss
    from peftlab.runners.experiment import run_experiment

    lm = save_tiny_causal_lm(tmp_path / "lm", seed=2)
    if tied:  # re-save with the LM head tied to the input embeddings (SmolLM2's layout)
        torch.manual_seed(2)
        LlamaForCausalLM(tiny_config("llama").__class__(**{**tiny_config("llama").to_dict(),
                                                          "tie_word_embeddings": True})).save_pretrained(lm)
    train, evalf = write_tiny_csvs(tmp_path, n_train=16, n_eval=8)
    raw = {"backbone": lm, "output_dir": str(tmp_path / "out"), "baseline": False,
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "linear_probe", "lr": 1e-2}, {"method": "lora", "lr": 5e-2, "r": 4, "alpha": 8},
                       {"method": "full", "lr": 1e-2}],
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                     "num_threads": 1}}
    rows = {r.name: r for r in run_experiment(validate_raw(raw), quiet=True)}
    assert all(r.status == "ok" for r in rows.values()), {n: r.error for n, r in rows.items()}
    causal = AutoModelForCausalLM.from_pretrained(lm)
    assert bool(causal.config.tie_word_embeddings) is tied
    want = reference_lm_loss(causal, AutoTokenizer.from_pretrained(lm), torch.device("cpu"), limit=64)["loss"]
    for r in rows.values():
        assert r.details["lm_loss"]["base"] == pytest.approx(want, rel=1e-5), r.name
    probe = rows["linear_probe"].details["lm_loss"]
    assert probe["adapted"] == pytest.approx(probe["base"], rel=1e-6)
    for name in ("lora", "full"):
        rec = rows[name].details["lm_loss"]
        assert rec["adapted"] != pytest.approx(rec["base"], rel=1e-5), name


def test_a_causal_classifier_checkpoint_without_an_lm_head_records_no_lm_loss(tiny_backbones, tmp_path) -> None:
    from conftest import write_tiny_csvs

    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    train, evalf = write_tiny_csvs(tmp_path, n_train=16, n_eval=8)
    raw = {"backbone": tiny_backbones["llama"], "output_dir": str(tmp_path / "out"), "baseline": False,
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "lora", "lr": 5e-2, "r": 4, "alpha": 8}],
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                     "num_threads": 1}}
    (row,) = run_experiment(validate_raw(raw), quiet=True)
    assert row.status == "ok" and "lm_loss" not in row.details and "drift" in row.details


def test_qlora_trains_after_the_drift_checks_eval_pass_on_its_quantised_base(tmp_path) -> None:
    """The drift check runs the freshly loaded (quantised) model in eval mode before QLoRA prepares
    it; on CPUs with AVX512-BF16, bitsandbytes would repack every 4-bit weight then (in_features >=
    64) and the training forward after it failed ("a view of a leaf Variable ... in-place"). The
    loader turns the repacking off, so the row trains and measures its drift."""
    from conftest import SPECIALS, WORDS, make_tokenizer, write_tiny_csvs
    from transformers import AutoModelForSequenceClassification, BertConfig

    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    path = tmp_path / "bert64"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=len(SPECIALS) + len(WORDS), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, pad_token_id=0, num_labels=3)).save_pretrained(str(path))
    make_tokenizer(path, with_cls=True)
    train, evalf = write_tiny_csvs(tmp_path, n_train=16, n_eval=8)
    raw = {"backbone": str(path), "baseline": False, "output_dir": str(tmp_path / "out"),
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "qlora", "lr": 1e-2, "r": 4, "alpha": 8,
                        "target_modules": ["query", "key", "value", "dense"]}],
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                     "num_threads": 1}}
    (row,) = run_experiment(validate_raw(raw), quiet=True)
    assert row.status == "ok", row.error
    assert 0.0 < row.details["drift"]["cka"] <= 1.0 + 1e-9
