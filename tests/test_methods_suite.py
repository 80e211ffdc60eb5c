"""The common method table for the methods of issue 3 (ia3, prompt/p/prefix tuning, houlsby,
pfeiffer, qlora) on tiny random models, mirroring tests/test_methods.py.

For each method: counted trainable/total == closed form (BERT, RoBERTa, Llama); a few epochs
lower the loss; exactly the intended parameters change; save -> load on a fresh base gives
identical logits, which differ from the untouched base; peft adapters load in plain
``PeftModel.from_pretrained``. qlora: the base stays Params4bit/Int8Params and frozen, and the
logical counts equal the fp32 closed form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import FAMILIES
from method_table import _one_thread, assert_counts_match_closed_form, fresh, train_tiny  # noqa: F401  (_one_thread: autouse)
from peftlab.methods import METHODS
from peftlab.estimate.params import all_linears, arch_spec

#: row id -> (method, params); learning rates high enough to move a tiny model in a few epochs
TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "ia3": ("ia3", {"lr": 3e-2}),
    "prompt_tuning": ("prompt_tuning", {"lr": 1e-2, "num_virtual_tokens": 4}),
    "prompt_tuning_random": ("prompt_tuning", {"lr": 3e-2, "num_virtual_tokens": 3, "init": "random"}),
    "p_tuning": ("p_tuning", {"lr": 1e-2, "num_virtual_tokens": 4, "encoder_hidden_size": 16}),
    "p_tuning_lstm": ("p_tuning", {"lr": 1e-2, "num_virtual_tokens": 3, "encoder": "lstm", "encoder_hidden_size": 8}),
    "prefix_tuning": ("prefix_tuning", {"lr": 3e-2, "num_virtual_tokens": 4}),
    "prefix_tuning_proj": ("prefix_tuning", {"lr": 1e-2, "num_virtual_tokens": 3, "projection": True,
                                             "encoder_hidden_size": 16}),
    "houlsby": ("houlsby", {"lr": 1e-2, "bottleneck_size": 4}),
    "pfeiffer": ("pfeiffer", {"lr": 1e-2, "reduction_factor": 8, "nonlinearity": "gelu"}),
    "qlora": ("qlora", {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0}),
    "qlora8": ("qlora", {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0, "bits": 8}),
    # the LoRA family's options on a quantised base (issue 20; lora's own rows: tests/test_methods.py)
    "qlora_dora": ("qlora", {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0, "use_dora": True}),
    "qlora_rslora_plus": ("qlora", {"lr": 3e-3, "r": 4, "alpha": 8, "dropout": 0.0, "use_rslora": True,
                                    "lora_plus_ratio": 16}),
    "qlora_all_linear": ("qlora", {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}),
}
#: rows trained end to end (the variants above are covered by the closed-form table)
TRAINED = ["ia3", "prompt_tuning", "p_tuning", "prefix_tuning", "houlsby", "pfeiffer", "qlora", "qlora8", "qlora_dora",
           "qlora_rslora_plus", "qlora_all_linear"]
PEFT_ROWS = ["ia3", "prompt_tuning", "p_tuning", "p_tuning_lstm", "prefix_tuning_proj", "qlora", "qlora_dora",
             "qlora_all_linear"]
#: rows whose prompts come from a trained encoder: peft saves the encoder's *output* (the encoder
#: is a training-time reparameterisation), so a reload skips one batched matmul chain and can
#: differ in the last float bits
ENCODER_ROWS = {"p_tuning", "p_tuning_lstm", "prefix_tuning_proj"}


def assert_same_logits(row: str, got, want) -> None:
    if row in ENCODER_ROWS:
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    else:
        assert np.array_equal(np.asarray(got), np.asarray(want))


def method_and_params(row: str) -> tuple[Any, Any]:
    name, kw = TABLE[row]
    method = METHODS.get(name)
    return method, method.Params(**kw)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("row", list(TABLE))
def test_counted_equals_closed_form(tiny_backbones, family, row):
    method, params = method_and_params(row)
    model, _ = fresh(tiny_backbones[family], method, params)
    assert_counts_match_closed_form(method, params, model)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("row", TRAINED)
def test_trains_only_its_parameters_and_round_trips(tiny_backbones, tmp_path: Path, family, row):
    method, params = method_and_params(row)
    model, tok = fresh(tiny_backbones[family], method, params)
    base_model, _ = fresh(tiny_backbones[family])
    run = train_tiny(method, params, model, tok, epochs=4)
    run.assert_trained_exactly_intended()
    model, spec = run.model, run.spec
    if method.name == "qlora":  # after training the base is still quantised, frozen, untouched
        quant = [p for p in model.parameters() if type(p).__name__ in ("Params4bit", "Int8Params")]
        assert len(quant) == len(all_linears(spec))  # every block linear (the pooler is part of the head, kept in full precision)
        assert not any(p.requires_grad for p in quant)

    method.save(model, params, tmp_path / "adapter")
    reloaded, _ = fresh(tiny_backbones[family], method, params)
    reloaded = method.load(reloaded, params, spec, tmp_path / "adapter")
    trained_logits = run.logits(model)
    assert_same_logits(row, run.logits(reloaded), trained_logits)
    assert not np.allclose(run.logits(base_model), trained_logits)


@pytest.mark.parametrize("row", PEFT_ROWS)
def test_peft_adapter_loads_in_plain_peft(tiny_backbones, tmp_path: Path, row):
    from peft import PeftModel

    from peftlab.backbones.kv_cache import CACHE_ARG, route_prefix_cache
    from peftlab.methods.qlora import disable_cpu_repacking

    method, params = method_and_params(row)
    path = tiny_backbones["bert"]
    model, tok = fresh(path, method, params)
    model = method.prepare(model, params, arch_spec(model.config))
    torch.manual_seed(1)
    with torch.no_grad():  # move every trained tensor away from its (often neutral) init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    method.save(model, params, tmp_path / "a")
    base, _ = fresh(path, method, params)
    # peftlab's own setting for quantised bases (bitsandbytes' CPU fast path changes numerics)
    disable_cpu_repacking(base)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    if method.name == "prefix_tuning" and CACHE_ARG == "cache":
        # peft 0.21's own prefix forward looks for `past_key_values`, which transformers >= 5.24
        # calls `cache`: the adapter loads in plain peft; its forward needs peftlab's routing
        route_prefix_cache(plain)
    model.eval()
    batch = tok(["good drug", "bad day really"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert_same_logits(row, plain(**batch).logits, model(**batch).logits)
        untouched, _ = fresh(path)
        assert not torch.allclose(untouched.eval()(**batch).logits, model(**batch).logits)
