"""``hra``: HRA (Yuan et al., 2024, Householder reflection adaptation), through peft.

Each targeted linear's weight is multiplied on its input side by a chain of ``r`` trained
Householder reflections, ``W' = W H``, ``H = prod_i (I - 2 u_i u_i^T / |u_i|^2)``: an orthogonal
transform like OFT's, built from ``r`` vectors of width d_in (r d_in values per linear). peft
initialises the vectors in identical pairs, so H starts as the identity and training starts from
the base model; ``apply_GS`` orthogonalises the vectors (Gram-Schmidt) before building H. H folds
into W (``merges``). The head is trained too (peft's ``modules_to_save``); saved in peft's format,
so plain ``PeftModel.from_pretrained`` loads it. ``{method: peft, peft_type: HRA}`` reaches the same
peft class without a closed form; this module adds the count, the memory flow and the defaults.
"""

from __future__ import annotations

from typing import Literal

from peft import HRAConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING as HRA_TARGETS
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.estimate.params import ArchSpec, targeted_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import TargetedPeftMethod, seq_cls_config


class HraParams(MethodParams):
    method: Literal["hra"] = "hra"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-2
    #: Householder reflections per linear (peft's default 8; even, so that peft's paired
    #: initialisation starts from H = I)
    r: int = Field(default=8, ge=2, multiple_of=2)
    #: Gram-Schmidt the vectors before building H (the paper's HRA with orthogonality)
    apply_GS: bool = False
    #: linear names (peft's suffix rule); None: peft's per-architecture defaults (attention query/value)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class Hra(TargetedPeftMethod):
    name = "hra"
    Params = HraParams
    default_targets = HRA_TARGETS
    peft_type = "HRA"
    merges = True
    composition = None  # reflections multiply: adapters do not add up to a sum of updates
    table_order = 165
    readme = Readme(
        on="text",
        trains=("HRA: per targeted linear (peft's default: attention query/value) a chain of `r` Householder "
                "reflections of its input (`r` trained vectors of width d_in; `apply_GS`: orthogonalised); the head"),
        closed_form="sum over targeted linears of `r` × d_in + head",
        via="peft",
    )

    def peft_config(self, params: HraParams, model: nn.Module, spec: ArchSpec | None) -> HRAConfig:
        return seq_cls_config(HRAConfig, model, spec, r=params.r, apply_GS=params.apply_GS,
                              target_modules=self.targets(params, model.config.model_type))

    def derived_trainable(self, params: HraParams, spec: ArchSpec) -> int:
        """``r`` vectors of width d_in per targeted linear (peft's ``hra_u``, d_in x r), plus the head."""
        linears = targeted_linears(spec, self.targets(params, spec.family)).values()
        return sum(params.r * d_in for d_in, _, _ in linears) + spec.head

    def flow(self, params: HraParams, spec: ArchSpec) -> Flow:
        """peft builds W H each step and applies it to the input, as a weight delta is: the input is
        kept for the delta's gradient, W H (d_out x d_in) for the input's (block linears only: BERT's
        pooler is part of the head). Building H keeps, whatever flows into the input, each of the
        chain's ``r`` partial products (d_in x d_in; the first is the identity) with its vector
        products (3 d_in each) and the frozen W that H is multiplied into (d_out x d_in)."""
        targets = self.targets(params, spec.family)
        linears = {n: spec.layer_linears[n][:2] for n in block_linears(spec, targets)}
        return Flow(delta={n: d_in * d_out for n, (d_in, d_out) in linears.items()},
                    built={n: params.r * d_in * d_in + d_out * d_in + 3 * params.r * d_in
                           for n, (d_in, d_out) in linears.items()})


REGISTERED = (Hra,)
