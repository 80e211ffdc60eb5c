"""``adalora``: AdaLoRA (Zhang et al., 2023, adaptive budget allocation), through peft.

Each targeted linear's update is an SVD-like product ``B diag(E) A`` of rank ``init_r`` (E starts at
zero, so training starts from the base model). During training, peft scores every singular
value's importance from its gradient and prunes the least important ones (E entries set to zero)
until on average ``target_r`` per linear remain: the budget falls on a cubic schedule from step
``tinit`` to ``total_step - tfinal``, then the final pattern is fixed for the last ``tfinal`` steps.
An orthogonality penalty on A and B (``orth_reg_weight``) is added to the model's own loss. The
head is trained too (peft's ``modules_to_save``); saved in peft's format with its rank pattern
(peft keeps only the surviving ranks), so plain ``PeftModel.from_pretrained`` loads it.

The schedule is tied to peftlab's optimizer steps: ``tinit`` and ``tfinal`` are fractions of the
run, and :meth:`Adalora.after_step` gives peft the run's total and calls its
``update_and_allocate`` after every optimizer step, while the gradients it scores still exist.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from peft import AdaLoraConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING as ADALORA_TARGETS
from pydantic import Field, model_validator
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.estimate.params import ArchSpec, targeted_linears, total_params
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import TargetedPeftMethod, seq_cls_config


class AdaloraParams(MethodParams):
    #: peft adds the orthogonality penalty to the model's own, unweighted loss; a loss peftlab
    #: weights by class from the logits would silently drop it
    class_weight_unreachable: ClassVar[str | None] = ("AdaLoRA's orthogonality penalty is part of the model's own "
                                                      "unweighted loss")

    method: Literal["adalora"] = "adalora"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-2
    #: rank each targeted linear starts with (peft's default)
    init_r: int = Field(default=12, ge=1)
    #: average rank per linear left at the end of the budget schedule (peft's default), below init_r
    target_r: int = Field(default=8, ge=1)
    alpha: PositiveFloat = 8.0
    dropout: float = Field(default=0.0, ge=0, lt=1)
    #: share of the run's optimizer steps trained at the full budget before pruning starts
    tinit: float = Field(default=0.1, ge=0, lt=1)
    #: share of the run's optimizer steps trained with the final rank pattern fixed
    tfinal: float = Field(default=0.2, ge=0, lt=1)
    #: weight of the orthogonality penalty on A and B (peft's default)
    orth_reg_weight: float = Field(default=0.5, ge=0)
    #: linear names (peft's suffix rule); None: peft's per-architecture defaults (attention query/value)
    target_modules: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _schedule(self) -> "AdaloraParams":
        if self.target_r >= self.init_r:  # peft's allocator fails on an equal budget (it prunes k = 0 ranks)
            raise ValueError(f"target_r ({self.target_r}) must be below init_r ({self.init_r}): the budget shrinks")
        if self.tinit + self.tfinal >= 1:
            raise ValueError(f"tinit + tfinal ({self.tinit} + {self.tfinal}) leave no steps to allocate ranks in")
        return self


class Adalora(TargetedPeftMethod):
    name = "adalora"
    Params = AdaloraParams
    default_targets = ADALORA_TARGETS
    peft_type = "ADALORA"
    merges = True
    shards = False  # the rank allocator scores whole parameters and their gradients, not FSDP shards
    composition = None  # each adapter keeps its own pruned ranks: factors do not line up to add
    table_order = 120
    readme = Readme(
        on="text",
        trains=("AdaLoRA: per targeted linear (peft's default: attention query/value) an SVD-like update "
                "B diag(E) A of rank `init_r`, pruned during training by importance to `target_r` on "
                "average (schedule: `tinit`, `tfinal` shares of the run's steps); the head"),
        closed_form="sum over targeted linears of `init_r` × (d_in + d_out + 1) + head (at the start; pruning zeroes E)",
        via="peft",
    )

    def peft_config(self, params: AdaloraParams, model: nn.Module, spec: ArchSpec | None) -> AdaLoraConfig:
        """``total_step`` 1 until the first optimizer step sets the run's (peft refuses None; the
        schedule is read only when allocating, so nothing runs with the placeholder)."""
        return seq_cls_config(AdaLoraConfig, model, spec, init_r=params.init_r, target_r=params.target_r,
                              lora_alpha=params.alpha, lora_dropout=params.dropout, tinit=0, tfinal=0,
                              total_step=1, orth_reg_weight=params.orth_reg_weight,
                              target_modules=self.targets(params, model.config.model_type))

    def after_step(self, model: nn.Module, params: AdaloraParams, step: int, total_steps: int) -> None:
        """Set the schedule from the run's optimizer steps (once), then let peft score the
        gradients and prune: it fixes the final pattern at step ``total - tfinal`` and re-applies
        it afterwards. Steps are counted from 1, so a run with ``tfinal`` 0 fixes it at its last."""
        tuner: Any = model.base_model
        config = tuner.peft_config[tuner.trainable_adapter_name]
        if config.total_step != total_steps:
            config.tinit = int(params.tinit * total_steps)
            config.tfinal = int(params.tfinal * total_steps)
            tuner.rankallocator.set_total_step(total_steps)  # the same config object peft saves
        tuner.update_and_allocate(step)

    def derived_trainable(self, params: AdaloraParams, spec: ArchSpec) -> int:
        """A (init_r x d_in), E (init_r) and B (d_out x init_r) per targeted linear, plus the head;
        pruning zeroes E entries but removes no parameter during training."""
        linears = targeted_linears(spec, self.targets(params, spec.family)).values()
        return sum(params.init_r * (d_in + d_out + 1) for d_in, d_out, _ in linears) + spec.head

    def derived_total(self, params: AdaloraParams, spec: ArchSpec) -> int:
        """Beyond the trained tensors, peft keeps each adapted linear's current rank as a frozen
        one-element parameter (``ranknum``)."""
        n = len(targeted_linears(spec, self.targets(params, spec.family)))
        return total_params(spec) + self.derived_trainable(params, spec) + n

    def flow(self, params: AdaloraParams, spec: ArchSpec) -> Flow:
        """LoRA's flow at rank ``init_r``: the input (or its dropped-out copy) kept for A, the
        ``init_r``-wide product for B (block linears only: BERT's pooler is part of the head)."""
        targets = self.targets(params, spec.family)
        return Flow(lora={n: params.dropout for n in block_linears(spec, targets)}, lora_r=params.init_r)


REGISTERED = (Adalora,)
