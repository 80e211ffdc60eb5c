"""CLIP's text tower with one prefix shared by every prompt (CoOp's [BOS] + context).

Why: CoOp trains context vectors that sit in front of every class name, and with features cached
the text tower is all that still runs each step: forward and backward over classes x (1 + n_ctx +
name) tokens. CLIP's text transformer is causal, so the hidden states of the shared [BOS] + context
positions do not depend on what follows them; they are the same in every class's prompt. This
module computes them once (one sequence) and lets each class's remaining tokens attend to them as
keys and values, which is what a decoder's KV cache does at inference, here with gradients. The
result equals the plain batched forward up to float rounding (tests check values and gradients);
the saving is the prefix's share of the tokens times (classes - 1): about 3.5x fewer text-tower
tokens with CoOp's 16 context vectors and short class names.

Only Hugging Face's ``CLIPTextModel`` layout is handled (embeddings, encoder.layers of
pre-norm attention + MLP, final_layer_norm, EOS pooling); other towers keep the plain path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def supports_shared_prefix(text_model: nn.Module) -> bool:
    """True for a Hugging Face CLIP text tower whose attention has no active dropout."""
    try:
        layers = text_model.encoder.layers
        attn = layers[0].self_attn
        _ = (text_model.embeddings.position_embedding, text_model.final_layer_norm, attn.q_proj, attn.scale)
    except (AttributeError, IndexError, TypeError):
        return False
    return all(not (l.self_attn.training and l.self_attn.dropout) for l in layers)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def _layer(layer: nn.Module, hp: torch.Tensor, hs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pre-norm CLIP encoder layer on the prefix (1, P, d) and the suffixes (C, S, d)."""
    attn = layer.self_attn
    n, c, s, p = attn.num_heads, hs.shape[0], hs.shape[1], hp.shape[1]
    xp, xs = layer.layer_norm1(hp), layer.layer_norm1(hs)
    qp, kp, vp = (_heads(proj(xp), n) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    qs, ks, vs = (_heads(proj(xs), n) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=attn.scale)
    keys = torch.cat([kp.expand(c, -1, -1, -1), ks], dim=2)
    values = torch.cat([vp.expand(c, -1, -1, -1), vs], dim=2)
    allowed = torch.ones(s, p + s, dtype=torch.bool, device=hs.device).tril(diagonal=p)
    os_ = F.scaled_dot_product_attention(qs, keys, values, attn_mask=allowed, scale=attn.scale)

    def finish(h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        h = h + attn.out_proj(o.transpose(1, 2).reshape(h.shape))
        return h + layer.mlp(layer.layer_norm2(h))

    return finish(hp, op), finish(hs, os_)


def pool_positions(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The EOS position of each prompt, by the rule of transformers' CLIPTextModel.

    Old configs (eos_token_id == 2) take the highest token id; newer ones the first EOS.
    """
    if eos_token_id == 2:
        return ids.to(torch.int).argmax(dim=-1)
    return (ids.to(torch.int) == eos_token_id).int().argmax(dim=-1)


def encode_shared_prefix(text_model: Any, projection: nn.Module, prefix: torch.Tensor,
                         ids: torch.Tensor) -> torch.Tensor:
    """(C, D) projected text features of prompts that all start with ``prefix``.

    ``prefix``: (P, d) token embeddings (before positions) of the shared first P positions.
    ``ids``: (C, L) the prompts' token ids, the first P of which stand for the prefix (their
    values only matter for EOS pooling). Positions after each prompt's EOS (padding) are computed
    but never pooled; causal attention keeps them out of the EOS state, as the padding mask does in
    the plain forward.
    """
    p = prefix.shape[0]
    pos = text_model.embeddings.position_embedding.weight
    hp = (prefix + pos[:p])[None]
    hs = text_model.embeddings.token_embedding(ids[:, p:]) + pos[p : ids.shape[1]]
    for layer in text_model.encoder.layers:
        hp, hs = _layer(layer, hp, hs)
    at = pool_positions(ids, text_model.eos_token_id) - p
    if bool((at < 0).any()):
        raise ValueError("an EOS token falls inside the shared prefix")
    hs = text_model.final_layer_norm(hs)
    return projection(hs[torch.arange(len(ids), device=hs.device), at])
