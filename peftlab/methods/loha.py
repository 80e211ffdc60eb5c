"""``loha``: LoHa (Hyeon-Woo et al., 2022, FedPara; LyCORIS), low-rank Hadamard product, through peft.

Each targeted linear learns two rank-``r`` products whose element-wise product is its update,
``dW = (alpha / r) (W1a W1b) * (W2a W2b)``: rank up to r^2 for 2 r (d_in + d_out) parameters.
W2b starts at zero, so training starts from the base model. The head is trained too (peft's
``modules_to_save``); saved in peft's format, so plain ``PeftModel.from_pretrained`` loads it.
"""

from __future__ import annotations

from typing import Literal

from peft import LoHaConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING as LOHA_TARGETS
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import TargetedPeftMethod, seq_cls_config
from peftlab.estimate.params import ArchSpec, targeted_linears


class LohaParams(MethodParams):
    method: Literal["loha"] = "loha"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-2
    r: int = Field(default=8, ge=1)
    alpha: PositiveFloat = 8.0
    #: linear names (peft's suffix rule); None: peft's per-architecture defaults (attention query/value)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class Loha(TargetedPeftMethod):
    name = "loha"
    Params = LohaParams
    default_targets = LOHA_TARGETS
    peft_type = "LOHA"
    merges = True
    composition = None  # a Hadamard product of two products: factors do not add up to a sum of updates
    table_order = 140
    readme = Readme(
        on="text",
        trains=("LoHa: per targeted linear (peft's default: attention query/value) two rank-`r` products "
                "whose element-wise product, scaled by `alpha`/`r`, is the update; the head"),
        closed_form="sum over targeted linears of 2 `r` × (d_in + d_out) + head",
        via="peft",
    )

    def peft_config(self, params: LohaParams, model: nn.Module, spec: ArchSpec | None) -> LoHaConfig:
        return seq_cls_config(LoHaConfig, model, spec, r=params.r, alpha=params.alpha,
                              target_modules=self.targets(params, model.config.model_type))

    def derived_trainable(self, params: LohaParams, spec: ArchSpec) -> int:
        """W1a, W2a (d_out x r) and W1b, W2b (r x d_in) per targeted linear, plus the head."""
        linears = targeted_linears(spec, self.targets(params, spec.family)).values()
        return sum(2 * params.r * (d_in + d_out) for d_in, d_out, _ in linears) + spec.head

    def flow(self, params: LohaParams, spec: ArchSpec) -> Flow:
        """The update is built as a full d_out x d_in matrix each step and applied to the input:
        a weight delta per adapted linear (block linears only: BERT's pooler is part of the head)."""
        targets = self.targets(params, spec.family)
        delta = {n: spec.layer_linears[n][0] * spec.layer_linears[n][1] for n in block_linears(spec, targets)}
        return Flow(delta=delta)


REGISTERED = (Loha,)
