"""``lm_lora``: LoRA on a causal LM trained to *say* the label's verbalizer, then scored exactly
as in-context classification (``icl``): the same templates, prompts and verbalizer scoring.

This is the second way to fine-tune a causal LM for classification, next to ``lora`` /
``qlora`` with a sequence-classification head (set ``backbone`` on those rows). The loss is
the cross-entropy of the gold label's first verbalizer given the zero-shot prompt; prompt tokens
are masked out, and the output head runs only at the answer positions (:func:`answer_loss`, below).
``quantize: 4bit`` makes it QLoRA.

The loss, with the output head applied only where it counts: the labels are -100 except on
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, TaskType, get_peft_model
from pydantic import Field

from peftlab.infra.config_base import PositiveFloat
from peftlab.methods.base import Readme
from peftlab.methods.icl import Icl, IclParams
from peftlab.methods.lora import default_targets


class LmLoraParams(IclParams):
    method: Literal["lm_lora"] = "lm_lora"  # type: ignore[assignment]
    class_weight_unreachable = "lm_lora trains on its answer tokens' loss"
    lr: PositiveFloat = 2e-4
    r: int = Field(default=8, ge=1)
    alpha: PositiveFloat = 16.0
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class LmLora(Icl):
    name = "lm_lora"
    Params = LmLoraParams
    table_order = 410
    readme = Readme(
        on="causal LMs",
        trains=("LoRA on the LM, trained to say the gold label's verbalizer, then scored as `icl` (`quantize: "
                "4bit`: QLoRA)"),
        closed_form="none (counted from the model)",
        via="peft",
    )
    saves_adapter = True

    def prepare_lm(self, model: Any, params: LmLoraParams) -> Any:
        return add_lora(model, params)

    def lm_loss(self, params: Any) -> Callable[[Any, dict[str, Any]], Any]:
        """The answer positions' cross-entropy, the head run there only (:func:`answer_loss`)."""
        return answer_loss

    def derived_trainable(self, params: Any, spec: Any) -> int:
        raise NotImplementedError("counted from the model; the closed forms cover classifier heads")

    def save(self, model: Any, params: Any, directory: Path) -> None:
        model.save_pretrained(str(directory))  # peft's format: PeftModel.from_pretrained loads it


def add_lora(model: Any, params: LmLoraParams) -> Any:
    """The causal LM wrapped by peft with the row's LoRA adapters (everything else frozen)."""
    conf = LoraConfig(task_type=TaskType.CAUSAL_LM, r=params.r, lora_alpha=params.alpha,
                      lora_dropout=params.dropout,
                      target_modules=params.target_modules or default_targets(model.config.model_type))
    return get_peft_model(model, conf)



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


REGISTERED = (LmLora,)
