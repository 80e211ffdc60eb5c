"""The FLOP counts of peftlab.estimate.flops against numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from peftlab.estimate.flops import (
    LinearUse,
    frozen_base_flops_per_token,
    full_ft_flops_per_token,
    gemm_flops,
    linear_uses,
    row_flops,
    summarise,
    training_flops,
    utilisation,
)


def test_row_flops_by_hand():
    assert row_flops(LinearUse(100, trainable=False, input_grad=False)) == 200  # forward only
    assert row_flops(LinearUse(100, trainable=False, input_grad=True)) == 400  # + input gradient
    assert row_flops(LinearUse(100, trainable=True, input_grad=False)) == 400  # + weight gradient
    assert row_flops(LinearUse(100, trainable=True, input_grad=True)) == 600  # the 6N of full training


def test_training_flops_counts_tokens_and_sequences():
    uses = [LinearUse(10, True, True), LinearUse(3, True, True, per_token=False)]
    # 7 real tokens in 2 sequences: 6*10*7 + 6*3*2
    assert training_flops(uses, tokens=7, sequences=2) == 420 + 36


def test_textbook_formulas_by_hand():
    assert full_ft_flops_per_token(1_000) == 6_000
    # frozen base of 1000 weights, 600 of them above the first adapter, 20 adapter weights
    assert frozen_base_flops_per_token(1_000, 600, 20) == 2_000 + 1_200 + 120
    assert gemm_flops(2, 3, 4) == 48
    assert utilisation(50.0, 2.0, 100.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        utilisation(1.0, 0.0, 1.0)


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    conf = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=16, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(conf)


BATCH = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
# per layer: q, k, v, attention output 8x8 each; intermediate 8x16; output 16x8
PER_LAYER = 4 * 64 + 2 * 128


def test_full_finetuning_is_6n_per_token_plus_head_per_sequence():
    uses = linear_uses(tiny_bert(), BATCH)
    token_n = sum(u.params for u in uses if u.per_token)
    seq_n = sum(u.params for u in uses if not u.per_token)
    assert token_n == 2 * PER_LAYER
    assert seq_n == 64 + 24  # pooler 8x8, classifier 8x3
    assert all(u.trainable and u.input_grad for u in uses)  # trainable embeddings: every input needs grad
    assert training_flops(uses, tokens=9, sequences=2) == full_ft_flops_per_token(token_n) * 9 + 6 * seq_n * 2


def test_lora_counts_no_gradients_below_the_first_adapter():
    from peft import LoraConfig, TaskType, get_peft_model

    model = get_peft_model(tiny_bert(), LoraConfig(task_type=TaskType.SEQ_CLS, r=2, lora_alpha=4,
                                                    target_modules=["query", "value"], modules_to_save=["classifier"]))
    uses = linear_uses(model, BATCH)
    first = uses[0]  # layer 0's frozen query: its input (the frozen embeddings) needs no gradient
    assert not first.trainable and not first.input_grad
    parts = summarise([u for u in uses if u.per_token])
    # adapters: 2 layers x (q, v) x (A 8x2 + B 2x8) = 128 weights
    assert parts["trainable"] == 128
    assert parts["base"] == 2 * PER_LAYER
    # frozen weights whose input needs a gradient: layer 0's attention output, intermediate and
    # output (above the q/v adapters) and all of layer 1 = 64 + 256 + PER_LAYER
    assert parts["base_above"] == 64 + 256 + PER_LAYER
    per_token = sum(row_flops(u) for u in uses if u.per_token)
    # the adapters' A matrices of layer 0 need no input gradient: 4 instead of 6 per weight
    assert per_token == frozen_base_flops_per_token(parts["base"], parts["base_above"], 128) - 2 * 2 * 16
