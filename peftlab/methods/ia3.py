"""``ia3``: (IA)^3 (Liu et al., 2022) learns vectors that rescale activations, through peft.

Per targeted linear one vector: it scales the output (width d_out) of attention key/value
projections and the input (width d_in) of feedforward modules. The head is trained too (peft's
``modules_to_save``). Defaults per architecture come from peft's own mappings.

Composition (``peftlab compose``, :data:`COMPOSITION`): vectors are combined as deltas from the
identity, ``l = 1 + sum c_i (l_i - 1)``: with coefficients summing to 1 that is Zhang et al.'s
weighted average, negation is ``2 - l`` (not ``-l``, which would flip every activation), and
``a - a`` is all ones (the base model). Because the scaled weight is ``diag(l) W``, this is also
exact in weight space: both modes agree. The merges (``--combine ties`` etc.) act on the same
deltas ``l - 1`` and add 1 back, in both modes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from peft import IA3Config
from peft.utils.constants import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as IA3_FEEDFORWARD,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3_TARGETS,
)
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Composition, Readme, TaskMerge
from peftlab.methods.peft_common import PeftMethod, check_targets, seq_cls_config
from peftlab.estimate.params import ArchSpec, targeted_linears


class Ia3Params(MethodParams):
    method: Literal["ia3"] = "ia3"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 3.16e-2
    target_modules: list[str] | None = Field(default=None, min_length=1)
    #: subset of target_modules whose *input* is scaled; required when target_modules is set
    feedforward_modules: list[str] | None = None


#: the key ending of a saved scaling vector
IA3_L = ".ia3_l"


def _combine(terms: list[tuple[float, Any]], rank: int | None) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    _no_rank(rank)
    first = terms[0][1]
    out = {}
    for key, l0 in first.tensors.items():
        if key.endswith(IA3_L):
            out[key] = 1 + sum((c * (ad.tensors[key] - 1) for c, ad in terms), torch.zeros_like(l0))
    return out, {}


def _merge(terms: list[tuple[float, Any]], rank: int | None,
           merge: TaskMerge
           ) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """``--combine ties`` etc.: the task vector of a module is ``l - 1`` (its departure from the
    identity, as in the linear rule); merged, then 1 is added back. Exact in both modes."""
    _no_rank(rank)
    weights = [c for c, _ in terms]
    return {key: (1 + merge(key, [ad.tensors[key].double() - 1 for _, ad in terms], weights)).to(l0.dtype)
            for key, l0 in terms[0][1].tensors.items() if key.endswith(IA3_L)}, {}


def _no_rank(rank: int | None) -> None:
    if rank is not None:
        raise PeftlabError("--rank applies to LoRA only ((IA)^3 modules are vectors)")


def _check_pair(a: Any, b: Any, mode: str) -> None:
    """Which modules scale their input is part of what was trained."""
    if a.config.get("feedforward_modules") != b.config.get("feedforward_modules"):
        raise PeftlabError(f"different target modules: {a.name} and {b.name} adapt different layers "
                           "(feedforward_modules differ)")


COMPOSITION = Composition(module_suffixes=(IA3_L,), combiners={"parameter": _combine, "weight": _combine},
                          identity=1.0, check_pair=_check_pair, mergers={"parameter": _merge, "weight": _merge})


def _defaults(model_type: str) -> tuple[list[str], list[str]]:
    if model_type not in IA3_TARGETS or model_type not in IA3_FEEDFORWARD:
        raise PeftlabError(
            f"ia3: no default target_modules for architecture {model_type!r}; "
            "set target_modules and feedforward_modules"
        )
    return sorted(IA3_TARGETS[model_type]), sorted(IA3_FEEDFORWARD[model_type])


class Ia3(PeftMethod):
    name = "ia3"
    Params = Ia3Params
    peft_type = "IA3"
    merges = True
    composition = COMPOSITION
    table_order = 190
    readme = Readme(
        on="text",
        trains=("(IA)^3: one vector per targeted linear, scaling the output of attention key/value and the input "
                "of `feedforward_modules` (peft's defaults), plus the head"),
        closed_form="sum of d_out (attention targets) and d_in (feed-forward targets) + head",
        via="peft",
    )

    def modules(self, params: Ia3Params, model_type: str) -> tuple[list[str], list[str]]:
        """(target_modules, feedforward_modules), the user's or peft's defaults."""
        if params.target_modules is None:
            if params.feedforward_modules is not None:
                raise PeftlabError("config error: ia3.feedforward_modules needs target_modules too")
            return _defaults(model_type)
        return list(params.target_modules), list(params.feedforward_modules or [])

    def check(self, params: Ia3Params, spec: ArchSpec | None, model_type: str) -> None:
        targets, feedforward = self.modules(params, model_type)
        # peft requires feedforward_modules to be a subset of target_modules (exact strings)
        stray = [f for f in feedforward if f not in targets]
        if stray:
            raise PeftlabError(f"config error: ia3.feedforward_modules: {stray} are not in target_modules")
        check_targets("ia3", targets, spec, model_type)

    def peft_config(self, params: Ia3Params, model: nn.Module, spec: ArchSpec | None) -> IA3Config:
        targets, feedforward = self.modules(params, model.config.model_type)
        return seq_cls_config(IA3Config, model, spec, target_modules=targets, feedforward_modules=feedforward)

    def derived_trainable(self, params: Ia3Params, spec: ArchSpec) -> int:
        """One scaling vector per targeted linear: d_in for feedforward modules (the input is
        scaled), d_out otherwise (the output is scaled); plus the head.

        Feedforward membership follows peft's own rule, a *plain* suffix test (``str.endswith``, no
        dot boundary): so BERT's default ``output.dense`` also marks ``attention.output.dense``.
        """
        targets, feedforward = self.modules(params, spec.family)
        return sum(
            d_in if any(name.endswith(f) for f in feedforward) else d_out
            for name, (d_in, d_out, _) in targeted_linears(spec, targets).items()
        ) + spec.head

    def flow(self, params: Ia3Params, spec: ArchSpec) -> Flow:
        """Each scaled linear keeps its input (feedforward: the input is scaled) or its output."""
        targets, feedforward = self.modules(params, spec.family)
        first = f"{spec.layers_prefix}.0."
        # peft's feedforward test is a plain suffix (so "output.dense" marks attention.output.dense too)
        return Flow(ia3={n: any((first + n).endswith(ff) for ff in feedforward) for n in block_linears(spec, targets)})


REGISTERED = (Ia3,)
