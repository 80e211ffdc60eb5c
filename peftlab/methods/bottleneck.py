"""Shared implementation of the bottleneck-adapter methods ``houlsby`` and ``pfeiffer``.

Freeze the backbone, insert residual bottleneck MLPs (see :mod:`bottleneck_layers`), train them
and the head. Adapters can NOT be merged into the base weights, unlike LoRA: the nonlinearity
between down- and up-projection makes the adapted layer non-linear in its input, so they always
add inference latency, which the comparison measures.

Saved as ``bottleneck_layers``' own adapter files plus the trained head in a separate safetensors
file (never pickle), so a reload needs only a fresh base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from peftlab.estimate.activations import Flow
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import save_safetensors
from peftlab.methods import bottleneck_layers as bl
from peftlab.methods.base import Method, freeze_all, head_names, read_safetensors, unfreeze
from peftlab.estimate.params import ArchSpec, num_blocks, total_params

HEAD_FILE = "head.safetensors"


class BottleneckParams(MethodParams):
    """Exactly one of bottleneck_size and reduction_factor (neither: reduction_factor 16)."""

    #: the pick of the documented search for Houlsby (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-3
    bottleneck_size: int | None = Field(default=None, ge=1)
    reduction_factor: PositiveFloat | None = None
    nonlinearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"

    @model_validator(mode="after")
    def _one_size(self) -> "BottleneckParams":
        if self.bottleneck_size is not None and self.reduction_factor is not None:
            raise ValueError("set exactly one of bottleneck_size and reduction_factor, not both")
        return self


class BottleneckMethod(Method):
    """Subclasses set ``name`` (= the adapter kind), ``Params`` and ``readme``."""

    runs_on = ("text",)
    composition = None  # a nonlinearity between down and up: adapters do not add up

    def adapter_config(self, params: BottleneckParams) -> bl.BottleneckConfig:
        try:
            return bl.BottleneckConfig(kind=self.name, bottleneck_size=params.bottleneck_size,
                                       reduction_factor=params.reduction_factor, nonlinearity=params.nonlinearity)
        except ValueError as exc:
            raise PeftlabError(f"config error: {self.name}: {exc}") from None

    def check(self, params: BottleneckParams, spec: ArchSpec | None, model_type: str) -> None:
        self.adapter_config(params)

    def prepare(self, model: nn.Module, params: BottleneckParams, spec: ArchSpec | None) -> nn.Module:
        freeze_all(model)
        try:
            bl.add_bottleneck_adapters(model, self.adapter_config(params))
        except ValueError as exc:
            raise PeftlabError(f"{self.name}: {exc}") from None
        for _, p in bl.adapter_parameters(model):
            p.requires_grad_(True)
        for name in head_names(model, spec):
            unfreeze(model.get_submodule(name))
        return model

    def adapter_params(self, params: BottleneckParams, spec: ArchSpec) -> int:
        # every site (attention / FFN output projection) has width ``hidden`` in supported families;
        # an encoder-decoder's sites are in the blocks of both stacks
        sites = bl.count_sites(num_blocks(spec), self.name)
        return bl.expected_adapter_params([spec.hidden] * sites, self.adapter_config(params))

    def derived_trainable(self, params: BottleneckParams, spec: ArchSpec) -> int:
        return self.adapter_params(params, spec) + spec.head

    def derived_total(self, params: BottleneckParams, spec: ArchSpec) -> int:
        return total_params(spec) + self.adapter_params(params, spec)  # the head is trained in place

    def flow(self, params: BottleneckParams, spec: ArchSpec) -> Flow:
        """An adapter (width b, its nonlinearity) after each of its kind's sites in a block."""
        size = self.adapter_config(params).size_for(spec.hidden)
        first = f"{spec.layers_prefix}.0."
        return Flow(adapters={n: (size, params.nonlinearity) for n in spec.layer_linears if bl.is_site(first + n, self.name)})

    def save(self, model: nn.Module, params: BottleneckParams, directory: Path) -> None:
        try:
            bl.save_adapters(model, self.adapter_config(params), directory)
        except ValueError as exc:
            raise PeftlabError(f"{self.name}: cannot save: {exc}") from None
        heads = _head_tensors(model)
        save_safetensors({n: p.detach().cpu().contiguous() for n, p in heads.items()}, directory / HEAD_FILE)

    def load(self, model: nn.Module, params: BottleneckParams, spec: ArchSpec | None, directory: Path) -> nn.Module:
        head_path = directory / HEAD_FILE
        head = read_safetensors(head_path, "saved head")
        try:
            cfg = bl.load_adapters(model, directory)
        except ValueError as exc:
            raise PeftlabError(f"{self.name}: cannot load adapters from {directory}: {exc}") from None
        if cfg != self.adapter_config(params):
            raise PeftlabError(f"{directory}: saved adapters {cfg.to_dict()} differ from this config's {self.name} params")
        own = dict(model.named_parameters())
        names = set(head_names(model, spec))
        expected = {n for n in own if any(n.startswith(h + ".") for h in names)}
        if set(head) != expected:
            raise PeftlabError(f"{head_path}: head tensors {sorted(head)} do not match this model's {sorted(expected)}")
        for n, t in head.items():
            if tuple(t.shape) != tuple(own[n].shape):
                raise PeftlabError(f"{head_path}: {n} has shape {tuple(t.shape)}, model has {tuple(own[n].shape)}")
            own[n].data.copy_(t.to(own[n].dtype))
        return model


def _head_tensors(model: nn.Module) -> dict[str, Any]:
    """The trained non-adapter tensors (the head), by full parameter name."""
    adapters = {n for n, _ in bl.adapter_parameters(model)}
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n not in adapters}
