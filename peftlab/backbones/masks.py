"""Attention masks in which every query row attends to at least one key (decoders, left padding).

Why: peftlab pads decoders on the left (they classify from the last position). Under a causal
mask, a leading pad position may only look at keys before it, which are pads too, so its whole
row of the (batch x 1 x query x key) mask is False: a query that attends to nothing. Its
softmax has no finite term and its log-sum-exp is -inf. transformers' ``sdpa_mask`` hands such
rows to SDPA as they are (4.x "unmasked unattended" rows for CUDA, guarded on torch < 2.5; 5.x
deprecated that switch, ``allow_torch_fix``, and dropped it). On a CPU every SDPA kernel returns
zeros for them, forward and backward (tests/test_masks.py checks the CPU kernels). CUDA kernels do
not all do so:

* cuDNN attention, SDPA's default on H100/H200 since torch 2.11, turns a row with a log-sum-exp
  below about -88.7 into a NaN query gradient when the sequence length is 64 modulo 128
  (pytorch/pytorch#196678; cuDNN frontend issues #160 and #262 on -inf log-sum-exp rows);
  peftlab pads to a multiple of 8, so batches of 64 tokens are common;
* NaN outputs on exactly the left-padded rows were reported for torch 2.13 on a B200
  (unslothai/unsloth#9848; transformers PR #47678).

A NaN at a pad position does not stay there: the next layer multiplies the pad positions' values
by an attention weight of zero, and 0 x NaN is NaN, so the real tokens' outputs and the loss
become NaN. bench/gpu.py saw exactly this on an H200 (torch 2.11, cu130): peftlab's SmolLM2-135M
full, LoRA and QLoRA training stopped on a NaN loss in the first epoch while the Trainer's (the
same left padding, but no padding to a multiple of 8) trained; bench/gpu_nan_probe.py's variants
tell the causes apart on a device.

What this does: a query row with no key left attends to every key of its sequence instead. Such a
row belongs to a padding position; no real position reads its output (its key is masked out for
every real query, and an attention weight of exactly zero times a finite value is zero) and no
head reads it (the classifier takes the last, real, position), so every real position computes
exactly what it did, on every kernel, and no kernel meets a row with nothing to attend to. The
extra cost is one reduction over the boolean mask per forward (built once, shared by every layer).

How: :data:`NAME` is registered with transformers' attention interface as its own ``sdpa``
function and with its mask interface as ``sdpa_mask`` followed by :func:`attend_somewhere`;
:func:`use` sets it on every sub-model of a decoder that uses ``sdpa``, at load
(peftlab.backbones.loaders, peftlab.backbones.causal_lm). transformers does not save
``_attn_implementation`` with a config (checked in tests/test_masks.py), so saved models name
plain ``sdpa``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: the name this implementation is registered under with transformers' attention and mask interfaces
NAME = "peftlab_sdpa"
BASE = "sdpa"


def attend_somewhere(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` (boolean, True = attend; (..., query, key)) with every all-False query row set all
    True; a float mask (added to the scores) with every row that is wholly at its dtype's minimum
    or -inf set to 0. ``None`` (no mask: SDPA's own causal path) stays ``None``."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask | ~mask.any(dim=-1, keepdim=True)
    blocked = (mask <= torch.finfo(mask.dtype).min).all(dim=-1, keepdim=True)
    return mask.masked_fill(blocked, 0.0)


def sdpa_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' ``sdpa_mask`` (same arguments), then :func:`attend_somewhere`."""
    from transformers.masking_utils import sdpa_mask as base

    return attend_somewhere(base(*args, **kwargs))


def _sdpa(*args: Any, **kwargs: Any) -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def register() -> None:
    """Make :data:`NAME` known to transformers (idempotent; every process that loads a model)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, _sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def configs(model: nn.Module, names: tuple[str, ...]) -> list[Any]:
    """Each sub-model config of ``model`` whose attention implementation is in ``names``, once (a
    model and its base model share one)."""
    found = {id(m.config): m.config for m in model.modules()
             if getattr(getattr(m, "config", None), "_attn_implementation", None) in names
             and hasattr(m, "set_attn_implementation")}
    return list(found.values())


def use(model: nn.Module) -> int:
    """Set :data:`NAME` on every sub-model of ``model`` whose attention is ``sdpa``; how many
    configs (others, e.g. ``eager`` or a flash kernel the user chose, are left as they are)."""
    found = configs(model, (BASE,))
    if found:
        register()
    for c in found:
        c._attn_implementation = NAME
    return len(found)
