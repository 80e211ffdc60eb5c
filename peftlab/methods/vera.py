"""``vera``: VeRA (Kopiczko et al., 2024), vector-based random matrix adaptation, through peft.

One pair of *frozen* random matrices, A (r x d_in) and B (d_out x r), is shared by every targeted
linear (peft slices it to each layer's widths); each linear learns only two scaling vectors, so
its update is ``diag(lambda_b) B diag(lambda_d) A``: r + d_out parameters per linear, whatever
the rank. lambda_b starts at zero, so training starts from the base model. The head is trained
too (peft's ``modules_to_save``). The random pair is saved with the adapter
(``save_projection``), so plain ``PeftModel.from_pretrained`` reloads it without regenerating it.
"""

from __future__ import annotations

from typing import Literal

from peft import VeraConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING as VERA_TARGETS
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import TargetedPeftMethod, seq_cls_config
from peftlab.estimate.params import ArchSpec, targeted_linears


class VeraParams(MethodParams):
    method: Literal["vera"] = "vera"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 3.16e-2
    #: rank of the shared random pair (costs r trained values per linear, not r x (d_in + d_out))
    r: int = Field(default=256, ge=1)
    #: linear names (peft's suffix rule); None: peft's per-architecture defaults (attention query/value)
    target_modules: list[str] | None = Field(default=None, min_length=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    #: lambda_d's initial value (the paper's d_init; small values train more stably)
    d_initial: PositiveFloat = 0.1
    #: seed of the shared random pair
    projection_prng_key: int = 0


class Vera(TargetedPeftMethod):
    name = "vera"
    Params = VeraParams
    default_targets = VERA_TARGETS
    peft_type = "VERA"
    merges = True
    composition = None  # the update is a product of the two trained vectors: adapters do not add up
    table_order = 130
    readme = Readme(
        on="text",
        trains=("VeRA: one frozen random pair A (`r` × d_in), B (d_out × `r`) shared by every targeted linear "
                "(peft's default: attention query/value), and per linear two trained scaling vectors, λ_d (`r`) "
                "and λ_b (d_out); the head"),
        closed_form="sum over targeted linears of `r` + d_out + head",
        via="peft",
    )

    def peft_config(self, params: VeraParams, model: nn.Module, spec: ArchSpec | None) -> VeraConfig:
        return seq_cls_config(VeraConfig, model, spec, r=params.r,
                              target_modules=self.targets(params, model.config.model_type),
                              vera_dropout=params.dropout, d_initial=params.d_initial,
                              projection_prng_key=params.projection_prng_key, save_projection=True)

    def derived_trainable(self, params: VeraParams, spec: ArchSpec) -> int:
        """lambda_d (r) and lambda_b (d_out) per targeted linear, plus the head; the shared A and B
        are buffers, not parameters."""
        linears = targeted_linears(spec, self.targets(params, spec.family)).values()
        return sum(params.r + d_out for _, d_out, _ in linears) + spec.head

    def flow(self, params: VeraParams, spec: ArchSpec) -> Flow:
        """Per token, each adapted linear keeps A x (r, for lambda_d's gradient) and B (lambda_d A x)
        (d_out, for lambda_b's); its input is not kept (A is frozen). With dropout, d_in more for
        the mask (an over-count where no gradient reaches the input). BERT's pooler is part of the head
        (peft never adapts it), so only block linears are adapted."""
        targets = self.targets(params, spec.family)
        mask = params.dropout > 0
        branch = {}
        for n in block_linears(spec, targets):
            d_in, d_out, _ = spec.layer_linears[n]
            branch[n] = params.r + d_out + (d_in if mask else 0)
        return Flow(branch=branch)


REGISTERED = (Vera,)
