"""The closed-form activation count (peftlab.estimate.activations) against what autograd really keeps.

``saved_tensors_hooks`` sees every tensor saved for backward; the closed form must match it
method by method on tiny random encoders, on both CPU attention paths (the math path taken with
attention dropout, the flash kernel without). A wrong term (a missing dropout mask, a frozen
layer counted as storing its input) moves the count by a whole tensor per layer and fails here.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import tiny_config
from peftlab.backbones.cpu_train import cpu_training
from peftlab.estimate.activation_flows import WALKS, method_flow
from peftlab.estimate.activation_probe import saved_tensor_bytes
from peftlab.estimate.activations import Step, autocast_counted
from peftlab.estimate.activations_encoder import dims_of, saved_bytes
from peftlab.methods import METHODS
from peftlab.estimate.params import arch_spec

B, L = 4, 16
TOLERANCE = 0.03

CASES = [
    {"method": "full"},
    {"method": "partial", "top_k": 1},  # frozen below the first trained block: nothing kept there
    {"method": "lora", "dropout": 0.0, "target_modules": ["query", "value"]},
    {"method": "lora", "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]},
    {"method": "lora", "dropout": 0.0, "target_modules": ["query", "key", "value", "dense"]},
    # DoRA keeps each adapted linear's frozen and LoRA outputs for the magnitude's gradient
    {"method": "lora", "dropout": 0.0, "target_modules": ["query", "value"], "use_dora": True},
    {"method": "lora", "dropout": 0.1, "target_modules": "all-linear", "use_dora": True},
    {"method": "lora", "dropout": 0.0, "target_modules": "all-linear"},
    {"method": "ia3"},
    {"method": "prompt_tuning", "init": "random", "num_virtual_tokens": 6},
    {"method": "p_tuning", "num_virtual_tokens": 6},
    {"method": "prefix_tuning", "num_virtual_tokens": 6},
    {"method": "prefix_tuning", "num_virtual_tokens": 4, "projection": True},
    {"method": "houlsby"},
    {"method": "pfeiffer", "nonlinearity": "gelu"},
    # trained norms only: the gradient starts at the embeddings' LayerNorm, no linear keeps its input
    {"method": "ln_tuning"},
    # HRA: a chain of reflections built each step, kept whatever flows into the input
    {"method": "hra", "r": 4},
]


#: how the measured step computes, and the Step the count is told
STEPS = {
    "fp32": Step(),
    # peftlab's CPU training path: its dropout sampler and attention (peftlab.backbones.cpu_train)
    "fp32-peftlab": Step(bits_dropout=True),
    "bf16-peftlab": Step(autocast=True, bits_dropout=True),  # the same under bf16 autocast, lean LoRA casts
    # plain bf16 autocast with peft's own LoRA casts, as on CUDA (whose masks are bools instead)
    "bf16-peft": Step(autocast=True, lean_casts=False),
}


def measure(family: str, raw: dict, attention_dropout: float, mode: str = "fp32") -> tuple[int, int]:
    conf = tiny_config(family)
    conf.attention_probs_dropout_prob = conf.attention_dropout = attention_dropout
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(conf)
    spec = arch_spec(model.config)
    method = METHODS.get(raw["method"])
    params = method.Params(**raw)
    dims, walk = WALKS.get(family)
    predicted = walk(method_flow(params, spec), dims(spec, model.config, B, L, STEPS[mode]))
    model = method.prepare(model, params, spec)
    ids = torch.randint(5, 25, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, L // 2:] = 0  # padding, as in a real batch
    if family == "llama":
        mask = mask.flip(1)  # decoders pad on the left
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(B, dtype=torch.long)}
    training = (cpu_training(model, "cpu", STEPS[mode].autocast, env={"PEFTLAB_CPU_DROPOUT": "bits"})
                if "peftlab" in mode else contextlib.nullcontext())
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=STEPS[mode].autocast)
    with training, autocast:
        return predicted, saved_tensor_bytes(model, batch)


@pytest.mark.parametrize("attention_dropout", [0.1, 0.0], ids=["math-attention", "flash-attention"])
@pytest.mark.parametrize("raw", CASES, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_closed_form_equals_saved_tensors(raw, attention_dropout):
    predicted, measured = measure("bert", raw, attention_dropout)
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


def _flow_of(family: str, raw: dict):
    spec = arch_spec(tiny_config(family))
    return method_flow(METHODS.get(raw["method"]).Params(**raw), spec)


@pytest.mark.parametrize("mode", ["fp32-peftlab", "bf16-peftlab", "bf16-peft"])
@pytest.mark.parametrize("attention_dropout", [0.1, 0.0], ids=["math-attention", "flash-attention"])
@pytest.mark.parametrize("raw", CASES, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_count_follows_the_step(raw, attention_dropout, mode):
    """The count as the step computes: peftlab's CPU path (its dropout sampler, its attention's boolean
    masks, lean LoRA casts) and bf16 autocast, where each linear keeps 2-byte copies of its input and
    weight. Methods the walk does not follow under autocast keep their fp32 count, which must then
    stay an upper bound."""
    predicted, measured = measure("bert", raw, attention_dropout, mode)
    if STEPS[mode].autocast and not autocast_counted(_flow_of("bert", raw)):
        assert measured <= predicted, (predicted, measured)
        return
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


@pytest.mark.parametrize("mode", ["bf16-peftlab", "bf16-peft"])
@pytest.mark.parametrize("raw", [
    {"method": "full"}, {"method": "partial", "top_k": 1},
    {"method": "lora", "dropout": 0.1, "target_modules": "all-linear"},
    {"method": "lora", "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    {"method": "prompt_tuning", "init": "random", "num_virtual_tokens": 6},
    {"method": "ln_tuning", "target_modules": ["post_attention_layernorm"]},
    {"method": "houlsby"}], ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_decoder_count_follows_the_step(raw, mode):
    """Llama under bf16 autocast: fp32 RMSNorms and rotary tables, low-precision q/k/v copies into
    the fused kernel, a low-precision copy of every position for the score head."""
    predicted, measured = measure("llama", raw, 0.0, mode)
    if not autocast_counted(_flow_of("llama", raw)):
        assert measured <= predicted, (predicted, measured)
        return
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


@pytest.mark.parametrize("raw", [{"method": "full"}, {"method": "lora", "dropout": 0.1}, {"method": "houlsby"},
                                 {"method": "lora", "dropout": 0.1, "target_modules": "all-linear", "use_dora": True}],
                         ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_roberta_head(raw):
    predicted, measured = measure("roberta", raw, 0.1)
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


LLAMA_CASES = [
    {"method": "full"},
    {"method": "partial", "top_k": 1},
    {"method": "lora", "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]},
    {"method": "lora", "dropout": 0.0, "target_modules": "all-linear", "use_dora": True},
    {"method": "ia3"},
    {"method": "prompt_tuning", "init": "random", "num_virtual_tokens": 6},
    {"method": "prefix_tuning", "num_virtual_tokens": 6},
    {"method": "houlsby"},
    # a trained RMSNorm keeps its normalised input; nothing below the lowest one keeps anything
    {"method": "ln_tuning", "target_modules": ["post_attention_layernorm"]},
]


@pytest.mark.parametrize("raw", LLAMA_CASES, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_decoder_closed_form_equals_saved_tensors(raw):
    """Llama: pre-RMSNorm blocks, grouped key/value heads (repeated for the padding mask), gated MLP."""
    predicted, measured = measure("llama", raw, 0.0)
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


def test_terms_follow_the_gradient():
    """Frozen blocks below the trained part keep nothing; lora dropout adds a copy and a mask per
    adapted input; more adapted layers keep more."""
    spec = arch_spec(tiny_config("bert"))
    d = dims_of(spec, tiny_config("bert"), B, L)

    def count(**raw: object) -> int:
        return saved_bytes(method_flow(METHODS.get(str(raw["method"])).Params(**raw), spec), d)

    assert count(method="partial", top_k=1) < count(method="partial", top_k=2) < count(method="full")
    qv = count(method="lora", dropout=0.0, target_modules=["query", "value"])
    assert count(method="lora", dropout=0.0, target_modules=["query", "key", "value", "dense"]) > qv
    assert count(method="lora", dropout=0.1, target_modules=["query", "value"]) > qv


def test_plan_uses_the_count():
    """``peftlab plan`` charges what autograd keeps (plus the backward's gradient buffers), frozen
    blocks included only where they keep something, and the CPU allocator allowance only on CPU."""
    from peftlab.estimate.activations import backward_working_bytes
    from peftlab.estimate.plan import plan_method

    conf = tiny_config("bert")
    spec = arch_spec(conf)
    plans = {}
    for raw in ({"method": "full"}, {"method": "partial", "top_k": 1}, {"method": "linear_probe"}):
        params = METHODS.get(raw["method"]).Params(**raw)
        plans[raw["method"]] = plan_method(params, spec, conf, B, L, overhead=0)
        d, flow = dims_of(spec, conf, B, L), method_flow(params, spec)
        if raw["method"] != "linear_probe":
            assert plans[raw["method"]].activation_bytes == saved_bytes(flow, d) + backward_working_bytes(flow, d)
    assert plans["linear_probe"].activation_bytes < plans["partial"].activation_bytes < plans["full"].activation_bytes
    full = plans["full"]
    assert full.allocator_bytes == full.activation_bytes
    cuda = plan_method(METHODS.get("full").Params(), spec, conf, B, L, overhead=0, device="cuda")
    assert cuda.allocator_bytes == 0 and cuda.total_bytes < full.total_bytes


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("mode", ["fp32", "bf16-peft"])
@pytest.mark.parametrize("raw", [{"method": "qlora", "dropout": 0.1, "target_modules": "all-linear"},
                                 {"method": "qlora", "dropout": 0.0, "compute_dtype": "bfloat16"}],
                         ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_qlora_count_follows_the_step(raw, mode, family, tmp_path):
    """QLoRA on a 4-bit base: bitsandbytes keeps its packed weight (no low-precision copy) and under
    autocast returns its input's dtype, so the feed-forward's wide tensors stay fp32. (peftlab trains
    QLoRA under autocast on CUDA only; on a CPU bitsandbytes' layers behave the same way.)"""
    conf = tiny_config(family)
    conf.attention_probs_dropout_prob = conf.attention_dropout = 0.0
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(conf).save_pretrained(tmp_path)
    method = METHODS.get("qlora")
    params = method.Params(**raw)
    spec = arch_spec(conf)
    kwargs = {**method.load_kwargs(params, tuple(spec.head_modules)), "device_map": "cpu"}
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, **kwargs)
    dims, walk = WALKS.get(family)
    predicted = walk(method_flow(params, spec), dims(spec, model.config, B, L, STEPS[mode]))
    model = method.prepare(model, params, spec)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, L // 2:] = 0
    batch = {"input_ids": torch.randint(5, 25, (B, L)), "attention_mask": mask.flip(1) if family == "llama" else mask,
             "labels": torch.zeros(B, dtype=torch.long)}
    with torch.autocast("cpu", torch.bfloat16, enabled=STEPS[mode].autocast):
        measured = saved_tensor_bytes(model, batch)
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


def test_a_method_not_followed_under_autocast_is_charged_every_weight_copy():
    """Where the walk keeps a method's fp32 count under autocast, the plan adds a low-precision copy of
    every block linear's weight: with a large model and a small batch those copies outweigh the
    activations, and the fp32 count alone would then no longer be an upper bound."""
    from peftlab.estimate.activation_flows import training_step_bytes

    conf = tiny_config("bert")
    spec = arch_spec(conf)
    flow = _flow_of("bert", {"method": "hra", "r": 4})
    assert not autocast_counted(flow)
    fp32, _ = training_step_bytes(flow, spec, conf, B, L, Step(autocast=False))
    under, _ = training_step_bytes(flow, spec, conf, B, L, Step(autocast=True))
    weights = spec.num_layers * sum(i * o for i, o, _ in spec.layer_linears.values())
    assert under == fp32 + 2 * weights
