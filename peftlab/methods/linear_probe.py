"""``linear_probe``: the backbone stays frozen and only the classification head trains.

Because nothing before the head changes, the runner computes the head's input features once
and trains on the cache: epochs after the first cost almost nothing. It computes in fp32 on every
device (``keeps_fp32``): bf16 could only speed up the one feature pass.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from peftlab.estimate.activations import Flow, full_flow
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Method, Readme, freeze_all, last_head, unfreeze
from peftlab.estimate.params import ArchSpec, probe_params


class LinearProbeParams(MethodParams):
    method: Literal["linear_probe"] = "linear_probe"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-1


class LinearProbe(Method):
    name = "linear_probe"
    Params = LinearProbeParams
    runs_on = ("text", "classifier", "clip")
    composition = None
    table_order = 30
    readme = Readme(
        on="text, images",
        trains="the last head module only (BERT: the classifier on the frozen pooler), on frozen features computed once and cached",
        closed_form="last head module (BERT: (h + 1) × classes; CLIP: (dim + 1) × classes)",
    )
    caches_features = True

    def prepare(self, model: nn.Module, params: LinearProbeParams, spec: ArchSpec | None) -> nn.Module:
        freeze_all(model)
        unfreeze(model.get_submodule(last_head(model, spec)))
        return model

    def keeps_fp32(self, params: LinearProbeParams, device_type: str) -> str | None:
        # one forward pass over the data, then epochs of one small matmul: bf16 would save a
        # fraction of the one pass, and its rounding would sit in the cached features of every epoch
        return "linear_probe: features are cached once and the head trains on them in fp32"

    def derived_trainable(self, params: LinearProbeParams, spec: ArchSpec) -> int:
        """The last head module: BERT's classifier on the frozen pooler's output (a linear map,
        as the name says); RoBERTa's whole dense + out_proj head, which is one module."""
        return probe_params(spec)

    def flow(self, params: LinearProbeParams, spec: ArchSpec) -> Flow:
        """Never walked (the cached-features runner has no backward through the backbone, and the
        plan counts it by the rough forward rule); full fine-tuning's, the safe side, if it were."""
        return full_flow(spec)


REGISTERED = (LinearProbe,)
