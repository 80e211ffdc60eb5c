"""Loading a causal LM (fp32, or 4/8-bit through bitsandbytes) by alias, path or hub id."""

from __future__ import annotations

from typing import Any

import torch

from peftlab.backbones import masks
from peftlab.backbones.loaders import _kwargs, loading_weights, resolve
from peftlab.config import BackboneConfig
from peftlab.methods.qlora import check_quantize, disable_cpu_repacking


def quantization_kwargs(quantize: str, device: torch.device) -> dict[str, Any]:
    """``from_pretrained`` kwargs for ``quantize`` = none | 4bit | 8bit (NF4 with fp32 compute)."""
    if quantize == "none":
        return {}
    check_quantize(quantize)
    from transformers import BitsAndBytesConfig

    # the output head stays fp32: label log-probabilities come straight from it
    skip = ["lm_head"]
    if quantize == "4bit":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                               llm_int8_skip_modules=skip)
    else:
        q = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return {"quantization_config": q, "device_map": {"": str(device) if device.type == "cuda" else "cpu"}}


def load_causal_lm(cfg: BackboneConfig, quantize: str, device: torch.device) -> Any:
    """The LM with every weight frozen (in-context learning trains nothing)."""
    from transformers import AutoModelForCausalLM

    with loading_weights(cfg):
        model = AutoModelForCausalLM.from_pretrained(
            resolve(cfg.name), dtype=torch.float32, **_kwargs(cfg), **quantization_kwargs(quantize, device))
    if quantize == "none":
        model.to(device)
    else:
        # keep bitsandbytes' standard 4-bit layout on CPU: its repacked fast path (bf16 block
        # statistics) gives other numbers, asserts on output sizes not a multiple of 32, and breaks
        # a later LoRA training forward (lm_lora); see peftlab.methods.qlora
        disable_cpu_repacking(model)
    masks.use(model)  # batches are left-padded: no query row may attend to nothing (masks' docstring)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
