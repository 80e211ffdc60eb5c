"""Attention with dropout on a CPU, while training: the math of SDPA without its slow parts.

Why: with dropout on the attention probabilities (BERT-family encoders train with 0.1),
``torch.nn.functional.scaled_dot_product_attention`` on a CPU cannot use its fused kernel and
falls back to its math path. Profiled on a MiniLM-L6 training step (bf16 autocast, one thread,
AMD EPYC, torch 2.13), that path spends most of its time outside the two products: torch's
Bernoulli sampler on every probability (~6 ns an element, see peftlab.backbones.dropout), and a
"safe softmax" that scans the whole (batch x heads x query x key) score tensor for rows that are
masked out entirely (``isneginf``, ``all``, ``where``). Timed alone (32 x 12 heads x 48 tokens x
32, forward and backward, on a machine shared with other jobs), SDPA took 32-40 ms and this function 22-24 ms.

Same model: the math path's own arithmetic. Query, key and value are upcast to fp32 as SDPA's
math path upcasts reduced precision on a CPU (with autocast off inside, as autocast does not reach into
SDPA's own math path either: under a training run's bf16 autocast the products would otherwise run
in bf16); scores are scaled, masked (a boolean mask keeps
True, a float mask is added), soft-maxed in fp32, dropped with :func:`peftlab.backbones.dropout.drop`
(each probability kept with 1 - p and scaled by 1 / (1 - p): the same dropout, another random
stream), multiplied by the value and cast back to the input dtype. A query row whose keys are all
masked out gets zeros, as SDPA's safe softmax gives (checked on the (batch x 1 x query x key) mask,
not on the scores). Everything else (evaluation, p = 0, a GPU, grouped-query heads, position biases,
soft-capping, returned attention weights) goes to transformers' own ``sdpa`` function unchanged.

It is switched on only together with peftlab's CPU dropout sampler (where that sampler is faster
on this CPU), for the length of a training run, by peftlab.backbones.cpu_train: :func:`switch`
registers the implementation under :data:`NAME` with transformers' attention and mask interfaces
and sets it on each sub-model that used ``sdpa`` (or peftlab.backbones.masks' ``sdpa``, which
decoders load with); :func:`restore` sets back what it replaced, so no saved config ever names it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftlab.backbones import dropout as cpu_dropout
from peftlab.backbones import masks

#: the name this implementation is registered under in transformers' AttentionInterface
NAME = "peftlab_cpu_sdpa"
_BASE = masks.BASE
#: what :func:`switch` replaces: plain sdpa, and sdpa with peftlab.backbones.masks' masks
_BASES = (_BASE, masks.NAME)
#: config id -> the implementation :func:`switch` replaced (for :func:`restore`; the config itself
#: is saved whole with a model, so nothing is stored on it)
_before: dict[int, str] = {}
#: keyword arguments that need transformers' own function (features this one does not implement)
_DELEGATE_KWARGS = ("position_bias", "softcap", "sliding_window", "s_aux", "sinks")


def _sdpa() -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def handles(module: nn.Module, query: torch.Tensor, dropout: float, kwargs: dict[str, Any]) -> bool:
    """Whether :func:`attention` computes this call itself (else transformers' sdpa does)."""
    return (module.training and dropout > 0.0 and query.device.type == "cpu"
            and getattr(module, "num_key_value_groups", 1) == 1
            and not kwargs.get("output_attentions", False)
            and all(kwargs.get(k) is None for k in _DELEGATE_KWARGS))


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature: (batch, heads, tokens, head dim) in, the
    output as (batch, tokens, heads, head dim) and no weights out, as ``sdpa_attention_forward``."""
    if not handles(module, query, dropout, kwargs):
        return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                       is_causal=is_causal, **kwargs)
    q_len = query.shape[2]
    causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    causal = bool(causal) and q_len > 1 and attention_mask is None
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # training runs under autocast, which would cast the fp32 products back to bf16: SDPA's own
    # math path computes them in fp32 (autocast does not reach inside it), so must this
    with torch.autocast(query.device.type, enabled=False):
        return _math(query, key, value, attention_mask, dropout, scale, causal)


def _math(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
          dropout: float, scale: float, causal: bool) -> tuple[torch.Tensor, None]:
    """SDPA's math path in fp32 with peftlab's sampler (the module docstring), autocast off."""
    q_len, kv_len = query.shape[2], key.shape[2]
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)).mul_(scale)
    keep: torch.Tensor | None = None
    if causal:
        keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    elif attention_mask is not None and attention_mask.dtype == torch.bool:
        keep = attention_mask
    elif attention_mask is not None:
        scores = scores + attention_mask[..., :kv_len].float()
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:  # rows with no key left: zeros, as SDPA's safe softmax (not NaN)
        probs = probs.masked_fill(~keep.any(dim=-1, keepdim=True), 0.0)
    probs = cpu_dropout.drop(probs, dropout)
    out = torch.matmul(probs, value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the same masks as sdpa gets


def attention_dropout(config: Any) -> float:
    """The dropout a config puts on attention probabilities, under the names transformers uses
    (BERT family: ``attention_probs_dropout_prob``; most others: ``attention_dropout``); 0 if none."""
    return max(float(getattr(config, k, 0.0) or 0.0) for k in ("attention_probs_dropout_prob", "attention_dropout"))


def switch(model: nn.Module) -> int:
    """Use :func:`attention` in every sub-model of ``model`` that uses ``sdpa`` (or
    peftlab.backbones.masks' sdpa, as decoders load) with attention dropout (elsewhere it would
    only hand every call on to sdpa); how many. :func:`restore` sets back what each had."""
    configs = [c for c in masks.configs(model, _BASES) if attention_dropout(c) > 0.0]
    if configs:
        _register()
    for c in configs:
        _before[id(c)] = c._attn_implementation
        c._attn_implementation = NAME
    return len(configs)


def restore(model: nn.Module) -> None:
    """Undo :func:`switch`: wherever it set :data:`NAME`, the implementation it replaced."""
    for c in masks.configs(model, (NAME,)):
        c._attn_implementation = _before.pop(id(c), _BASE)
