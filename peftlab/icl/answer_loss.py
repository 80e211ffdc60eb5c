"""The causal-LM training loss of ``lm_lora`` with the output head applied only where it counts.

``lm_lora`` trains an LM to say a label's verbalizer after a prompt: the labels are -100 except on
the few answer tokens. ``model(**batch).loss`` projects *every* position through the LM head
(vocab x hidden: 49k x 576 on SmolLM2, about a fifth of the model's FLOPs per token, and the
same again in its backward) and then keeps a handful of rows. Here the head runs only at the
positions that predict an answer token, through transformers' ``logits_to_keep`` argument: since
transformers 5 a *boolean* ``(batch, seq)`` tensor keeps exactly the True positions, flattened
row-major to ``(n_kept, vocab)`` (``modeling_utils.slice_logits_to_keep``, used by the causal-LM
class of nearly every architecture, so model-specific output steps such as Gemma's logit
soft-capping still apply; a peft wrapper passes the argument through). The 4-bit path is the same:
``peftlab.backbones.causal_lm`` keeps ``lm_head`` out of quantisation.

The loss is the one HF computes (``loss_utils.ForCausalLMLoss`` without ``num_items_in_batch``):
labels shifted left by one, cross-entropy in fp32, averaged over every non-ignored token of the
batch (a token mean, not a per-example mean), so training follows the same numbers as before.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``keep`` (bool, same shape as ``labels``): the positions whose next token is a label, and
    the targets they predict, in ``keep``'s row-major order. Position t predicts token t + 1."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE)  # shifted[:, t] = labels[:, t + 1]
    keep = shifted != IGNORE
    return keep, shifted[keep]


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the (peft-unwrapped) model's forward takes ``logits_to_keep``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def full_head_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The definition: HF's own loss over the head applied at every position."""
    return model(**batch).loss


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token-mean cross-entropy of the answer tokens with the LM head run only where they are
    predicted; equal to :func:`full_head_loss` (``batch``: input_ids, attention_mask, labels).
    Falls back to it for a model whose forward cannot keep a boolean set of positions."""
    if not accepts_logits_to_keep(model):
        return full_head_loss(model, batch)
    keep, targets = answer_positions(batch["labels"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    if logits.shape[:-1] != targets.shape:  # an architecture that reads logits_to_keep its own way
        return full_head_loss(model, batch)
    return F.cross_entropy(logits.float(), targets)
