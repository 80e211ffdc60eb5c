"""``lm_lora``: LoRA on a causal LM trained to *say* the label's verbalizer, then scored exactly
as in-context classification (``icl``): the same templates, prompts and verbalizer scoring.

This is the second way to fine-tune a causal LM for classification, next to ``lora`` /
``qlora`` with a sequence-classification head (set ``backbone`` on those rows). The loss is
the cross-entropy of the gold label's first verbalizer given the zero-shot prompt; prompt tokens
are masked out, and the output head runs only at the answer positions
(:mod:`peftlab.icl.answer_loss`). ``quantize: 4bit`` makes it QLoRA.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from peft import LoraConfig, TaskType, get_peft_model
from pydantic import Field

from peftlab.icl.answer_loss import answer_loss
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
        """The answer positions' cross-entropy, the head run there only (peftlab.icl.answer_loss)."""
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


REGISTERED = (LmLora,)
