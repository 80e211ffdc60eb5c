"""``full``: every weight trains. The reference the cheaper methods are compared with."""

from __future__ import annotations

from typing import Literal

from torch import nn

from peftlab.estimate.activations import Flow, full_flow
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Method, Readme
from peftlab.estimate.params import ArchSpec, total_params


class FullParams(MethodParams):
    method: Literal["full"] = "full"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-4


class Full(Method):
    name = "full"
    Params = FullParams
    runs_on = ("text", "classifier")
    composition = None  # nothing to add up: a fully fine-tuned model is not a module
    table_order = 10
    readme = Readme(
        on="text, image classifiers",
        trains="every weight (batch-norm statistics saved too)",
        closed_form="the architecture's total",
    )

    def prepare(self, model: nn.Module, params: FullParams, spec: ArchSpec | None) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def derived_trainable(self, params: FullParams, spec: ArchSpec) -> int:
        return total_params(spec)

    def flow(self, params: FullParams, spec: ArchSpec) -> Flow:
        return full_flow(spec)


REGISTERED = (Full,)
