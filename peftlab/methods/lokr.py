"""``lokr``: LoKr (Edalati et al., 2022; LyCORIS), low-rank Kronecker product, through peft.

Each targeted linear's update is a Kronecker product ``dW = (alpha / r) W1 (x) W2``: d_out and
d_in are each factored into two numbers (peft's ``factorization``, nearest to a square unless
``decompose_factor`` fixes one), W1 is small and full, W2 is low-rank (``W2a W2b``) when ``r`` is
below half its size (with ``decompose_both``, W1 too). W1 starts at zero, so training starts from
the base model. The head is trained too (peft's ``modules_to_save``); saved in peft's format.
"""

from __future__ import annotations

from typing import Literal

from peft import LoKrConfig
from peft.tuners.lokr.layer import factorization
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING as LOKR_TARGETS
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import TargetedPeftMethod, seq_cls_config
from peftlab.estimate.params import ArchSpec, targeted_linears


class LokrParams(MethodParams):
    method: Literal["lokr"] = "lokr"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-2
    r: int = Field(default=8, ge=1)
    alpha: PositiveFloat = 8.0
    #: linear names (peft's suffix rule); None: peft's per-architecture defaults (attention query/value)
    target_modules: list[str] | None = Field(default=None, min_length=1)
    #: factor W1 into a low-rank product too (when ``r`` is below half its size)
    decompose_both: bool = False
    #: the size of W1's side (a divisor of d_in and d_out); -1: the factoring nearest to a square
    decompose_factor: int = -1


def factor_params(d_in: int, d_out: int, params: LokrParams) -> int:
    """Parameters of one linear's W1 and W2, by peft's rule for choosing full or low-rank factors."""
    in_m, in_n = factorization(d_in, params.decompose_factor)
    out_l, out_k = factorization(d_out, params.decompose_factor)
    r = params.r
    w1_full = not (params.decompose_both and r < max(out_l, in_m) / 2)
    w2_full = not (r < max(out_k, in_n) / 2)
    w1 = out_l * in_m if w1_full else r * (out_l + in_m)
    w2 = out_k * in_n if w2_full else r * (out_k + in_n)
    return w1 + w2


class Lokr(TargetedPeftMethod):
    name = "lokr"
    Params = LokrParams
    default_targets = LOKR_TARGETS
    peft_type = "LOKR"
    merges = True
    composition = None  # a Kronecker product of two factors: they do not add up to a sum of updates
    table_order = 150
    readme = Readme(
        on="text",
        trains=("LoKr: per targeted linear (peft's default: attention query/value) a Kronecker product "
                "W1 ⊗ W2 scaled by `alpha`/`r`, W1 small and full, W2 rank-`r` when `r` is below half its size "
                "(`decompose_both`: W1 too; `decompose_factor` fixes W1's side); the head"),
        closed_form=("sum over targeted linears of W1's and W2's sizes (d_out = l·k, d_in = m·n: l·m "
                     "+ k·n, or `r` × (k + n) when low-rank) + head"),
        via="peft",
    )

    def peft_config(self, params: LokrParams, model: nn.Module, spec: ArchSpec | None) -> LoKrConfig:
        return seq_cls_config(LoKrConfig, model, spec, r=params.r, alpha=params.alpha,
                              target_modules=self.targets(params, model.config.model_type),
                              decompose_both=params.decompose_both, decompose_factor=params.decompose_factor)

    def derived_trainable(self, params: LokrParams, spec: ArchSpec) -> int:
        linears = targeted_linears(spec, self.targets(params, spec.family)).values()
        return sum(factor_params(d_in, d_out, params) for d_in, d_out, _ in linears) + spec.head

    def flow(self, params: LokrParams, spec: ArchSpec) -> Flow:
        """The update is built as a full d_out x d_in matrix each step and applied to the input: a
        weight delta per adapted linear (a low-rank W2's product, a few KB, is not counted). Block
        linears only: BERT's pooler is part of the head."""
        targets = self.targets(params, spec.family)
        delta = {n: spec.layer_linears[n][0] * spec.layer_linears[n][1] for n in block_linears(spec, targets)}
        return Flow(delta=delta)


REGISTERED = (Lokr,)
