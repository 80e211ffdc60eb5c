"""``lora``: low-rank updates W + (alpha/r) * B A on chosen linear layers, through Hugging Face peft.

The head is trained too (peft's ``modules_to_save``), since a new task needs a new head. Saved
in peft's own format, so plain ``PeftModel.from_pretrained`` loads it; prepare/save/load are the
shared :class:`~peftlab.methods.peft_common.PeftMethod` ones.
"""

from __future__ import annotations

from typing import Literal

from peft import LoraConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_TARGETS
from pydantic import Field
from torch import nn

from peftlab.config_base import MethodParams, PositiveFloat
from peftlab.errors import PeftlabError
from peftlab.methods.peft_common import PeftMethod, check_targets, seq_cls_config
from peftlab.params import ArchSpec, lora_params


class LoraParams(MethodParams):
    method: Literal["lora"] = "lora"
    lr: PositiveFloat = 5e-4
    r: int = Field(default=8, ge=1)
    alpha: PositiveFloat = 16.0
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(default=None, min_length=1)


def default_targets(model_type: str) -> list[str]:
    """peft's per-architecture defaults (attention query and value for most families)."""
    if model_type not in LORA_TARGETS:
        raise PeftlabError(
            f"lora: no default target_modules for architecture {model_type!r}; set target_modules"
        )
    return list(LORA_TARGETS[model_type])


class Lora(PeftMethod):
    name = "lora"
    Params = LoraParams

    def targets(self, params: LoraParams, model_type: str) -> list[str]:
        return params.target_modules or default_targets(model_type)

    def check(self, params: LoraParams, spec: ArchSpec | None, model_type: str) -> None:
        check_targets("lora", self.targets(params, model_type), spec, model_type)

    def peft_config(self, params: LoraParams, model: nn.Module, spec: ArchSpec | None) -> LoraConfig:
        return seq_cls_config(LoraConfig, model, spec, r=params.r, lora_alpha=params.alpha,
                              lora_dropout=params.dropout, target_modules=self.targets(params, model.config.model_type))

    def derived_trainable(self, params: LoraParams, spec: ArchSpec) -> int:
        targets = params.target_modules or default_targets(spec.family)
        return lora_params(spec, targets, params.r) + spec.head
