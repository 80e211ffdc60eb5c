"""Encoder-decoder backbones, T5 family (issue 21).

The closed forms from T5-small's configuration alone (no weights): the six trainable counts a
course report checked by hand, each peftlab's trainable count without the head; and, on tiny
random T5s (ReLU and gated-GELU FFNs, encoder and decoder of different depths), counted == closed
form for every method.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, T5Config

from peftlab.estimate.params import arch_spec, count_params
from peftlab.methods import METHODS

#: t5-small's configuration (T5Config's defaults are t5-small's), three labels for the head
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, num_labels=3)


def _without_head(method: str, **params: Any) -> int:
    m = METHODS.get(method)
    p = m.Params(**params)
    spec = arch_spec(T5Config(**T5_SMALL))
    m.check(p, spec, "t5")
    return m.derived_trainable(p, spec) - spec.head


@pytest.mark.parametrize(("method", "params", "want"), [
    ("lora", {"r": 8}, 294_912),  # q and v of 6 encoder self-attentions, 6 decoder self- and 6 cross-attentions
    ("lora", {"r": 1}, 36_864),
    ("prompt_tuning", {"num_virtual_tokens": 10}, 5_120),
    ("prompt_tuning", {"num_virtual_tokens": 1}, 512),
    ("pfeiffer", {"bottleneck_size": 8}, 104_544),  # 12 blocks x ((512 + 1) 8 + (8 + 1) 512)
    ("pfeiffer", {"bottleneck_size": 1}, 18_444),
])
def test_the_reports_six_counts_from_t5_smalls_config(method, params, want):
    assert _without_head(method, **params) == want


def test_t5_small_total_counts_the_tied_embedding_once():
    """60.5M: the report's size of T5-small (the shared embedding once, relative biases in block 0 only)."""
    spec = arch_spec(T5Config(**T5_SMALL))
    from peftlab.estimate.params import total_params

    assert total_params(spec) - spec.head == 60_506_624


def tiny_t5_config(gated: bool) -> T5Config:
    return T5Config(vocab_size=25, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
                    num_labels=3, feed_forward_proj="gated-gelu" if gated else "relu", decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=4)


CLOSED_FORM_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("full", {}), ("partial", {"top_k": 1}), ("partial", {"top_k": 3}), ("linear_probe", {}),
    ("lora", {"r": 4}), ("lora", {"r": 2, "target_modules": "all-linear"}), ("ia3", {}),
    ("houlsby", {"bottleneck_size": 4}), ("pfeiffer", {"bottleneck_size": 4}),
]


@pytest.mark.parametrize("gated", [False, True], ids=["relu", "gated-gelu"])
@pytest.mark.parametrize(("method", "params"), CLOSED_FORM_ROWS, ids=lambda x: x if isinstance(x, str) else None)
def test_counted_equals_closed_form_on_a_config_built_t5(gated, method, params):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_t5_config(gated))
    spec = arch_spec(model.config)
    m = METHODS.get(method)
    p = m.Params(**params)
    m.check(p, spec, model.config.model_type)
    trainable, total = count_params(m.prepare(model, p, spec))
    assert (trainable, total) == (m.derived_trainable(p, spec), m.derived_total(p, spec))
