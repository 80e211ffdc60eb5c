"""``linear_probe``: the backbone stays frozen and only the classification head trains.

Because nothing before the head changes, the runner computes the head's input features once
and trains on the cache: epochs after the first cost almost nothing.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from peftlab.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Method, freeze_all, head_names, unfreeze
from peftlab.params import ArchSpec


class LinearProbeParams(MethodParams):
    method: Literal["linear_probe"] = "linear_probe"
    lr: PositiveFloat = 1e-2


class LinearProbe(Method):
    name = "linear_probe"
    Params = LinearProbeParams
    caches_features = True

    def prepare(self, model: nn.Module, params: LinearProbeParams, spec: ArchSpec | None) -> nn.Module:
        freeze_all(model)
        for name in head_names(model, spec):
            unfreeze(model.get_submodule(name))
        return model

    def derived_trainable(self, params: LinearProbeParams, spec: ArchSpec) -> int:
        return spec.head
