"""The common method table: every method on tiny random models.

For each method: counted trainable/total == closed form (three architectures); a few epochs
lower the loss; exactly the intended parameters change; save -> load on a fresh base gives
identical logits, which differ from the untouched base model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DataCollatorWithPadding

from conftest import FAMILIES
from method_table import assert_counts_match_closed_form, fresh, split, train_tiny
from peftlab.methods import METHODS
from peftlab.params import arch_spec
from peftlab.runners.batching import encode
from peftlab.runners.train import predict_logits

#: method -> params for the table; learning rates high enough to move a tiny model fast
TABLE = {
    "full": {"lr": 3e-3},
    "partial": {"lr": 3e-3, "top_k": 1},
    "linear_probe": {"lr": 5e-2},
    "lora": {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(TABLE))
def test_counted_equals_closed_form(tiny_backbones, family, name):
    model, _ = fresh(tiny_backbones[family])
    method = METHODS.get(name)
    params = method.Params(**TABLE[name])
    assert_counts_match_closed_form(method, params, model)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("name", list(TABLE))
def test_trains_only_its_parameters_and_round_trips(tiny_backbones, tmp_path: Path, family, name):
    method = METHODS.get(name)
    params = method.Params(**TABLE[name])
    model, tok = fresh(tiny_backbones[family])
    base_model, _ = fresh(tiny_backbones[family])
    run = train_tiny(method, params, model, tok, epochs=6)
    run.assert_trained_exactly_intended()
    model, spec = run.model, run.spec

    method.save(model, params, tmp_path / "adapter")
    reloaded, _ = fresh(tiny_backbones[family])
    reloaded = method.load(reloaded, params, spec, tmp_path / "adapter")
    trained_logits = run.logits(model)
    assert np.array_equal(run.logits(reloaded), trained_logits)
    assert not np.allclose(run.logits(base_model), trained_logits)


def test_lora_adapter_loads_in_plain_peft(tiny_bert, tmp_path: Path):
    from peft import PeftModel

    method = METHODS.get("lora")
    params = method.Params(r=2, alpha=4)
    model, tok = fresh(tiny_bert)
    model = method.prepare(model, params, arch_spec(model.config))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    method.save(model, params, tmp_path / "a")
    base, _ = fresh(tiny_bert)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    model.eval()
    batch = tok(["good drug", "bad day"], return_tensors="pt", padding=True)
    assert torch.equal(plain(**batch).logits, model(**batch).logits)


def test_lora_merged_equals_unmerged(tiny_bert):
    method = METHODS.get("lora")
    params = method.Params(r=2, alpha=4, dropout=0.0)
    model, tok = fresh(tiny_bert)
    model = method.prepare(model, params, arch_spec(model.config)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    batch = tok(["good drug", "bad day really"], return_tensors="pt", padding=True)
    unmerged = model(**batch).logits
    merged = model.merge_and_unload()(**batch).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    base, _ = fresh(tiny_bert)
    assert not torch.allclose(base.eval()(**batch).logits, unmerged)


def test_linear_probe_cached_features_equal_recomputed(tiny_backbones):
    """The head trained on the cache gives the same logits as the full model forward."""
    from peftlab.runners.cached import head_inputs

    for family in ("bert", "roberta", "llama"):
        model, tok = fresh(tiny_backbones[family])
        spec = arch_spec(model.config)
        model = METHODS.get("linear_probe").prepare(model, None, spec).eval()
        feats = encode(tok, split(10, 3), 32)
        collate = DataCollatorWithPadding(tok)
        head = model.get_submodule(spec.head_modules[0])
        x = head_inputs(model, head, feats, collate, 4, torch.device("cpu"), spec.is_decoder)
        with torch.no_grad():
            cached = head(x).numpy()
        full = predict_logits(model, feats, collate, 3, torch.device("cpu"))
        np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-6)
