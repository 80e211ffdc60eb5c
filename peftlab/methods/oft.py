"""``oft``: OFT (Qiu et al., 2023, orthogonal finetuning), through peft.

Each targeted linear's input is rotated by a trained block-diagonal orthogonal matrix before the
frozen weight, ``y = W (R x)``: d_in is cut into blocks of ``block_size``, and each block's rotation
is the Cayley transform of a skew-symmetric matrix, stored as its b (b - 1) / 2 upper-triangle
values. The skew parts start at zero (R = I), so training starts from the base model, and the
rotation folds into W (``merges``). The head is trained too (peft's ``modules_to_save``); saved in
peft's format, so plain ``PeftModel.from_pretrained`` loads it.

peft *adjusts* a block size that does not divide a layer's input width to a nearby divisor (a
warning, a different model than asked for); peftlab refuses it instead, naming the layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from peft import OFTConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING as OFT_TARGETS
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.estimate.params import ArchSpec, matches_target, targeted_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import TargetedPeftMethod, seq_cls_config


def check_block_size(method: str, field: str, size: int, widths: Mapping[str, int], model_type: str) -> None:
    """Refuse a block size that does not divide a targeted linear's input width (``widths``: name ->
    d_in), where peft would silently pick another size (OFT) or fail deep inside (BOFT)."""
    for name, d_in in widths.items():
        if d_in % size:
            raise PeftlabError(f"config error: {method}.{field}: {size} does not divide the input width {d_in} of "
                               f"{name} ({model_type}); choose a divisor of it")


def model_input_widths(model: nn.Module, targets: list[str]) -> dict[str, int]:
    """Input widths of the targeted linears of a loaded model (architectures without a spec)."""
    return {n: m.in_features for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(matches_target(n, t) for t in targets)}


def spec_input_widths(spec: ArchSpec, targets: list[str]) -> dict[str, int]:
    return {n: d_in for n, (d_in, _, _) in targeted_linears(spec, targets).items()}


class OftParams(MethodParams):
    method: Literal["oft"] = "oft"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 3.16e-3
    #: rotation block width b (peft's default 32): it must divide every targeted linear's input
    #: width; costs b (b - 1) / 2 trained values per block, d_in (b - 1) / 2 per linear
    block_size: int = Field(default=32, ge=2)
    #: one rotation block shared by all the blocks of a linear (b (b - 1) / 2 values per linear)
    block_share: bool = False
    #: linear names (peft's suffix rule); None: peft's per-architecture defaults (attention query/value)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class Oft(TargetedPeftMethod):
    name = "oft"
    Params = OftParams
    default_targets = OFT_TARGETS
    peft_type = "OFT"
    merges = True
    composition = None  # rotations multiply: adapters do not add up to a sum of updates
    table_order = 160
    readme = Readme(
        on="text",
        trains=("OFT: per targeted linear (peft's default: attention query/value) a block-diagonal rotation of "
                "its input, blocks of `block_size` (each the Cayley transform of a trained skew-symmetric "
                "matrix; `block_share`: one block per linear); the head"),
        closed_form=("sum over targeted linears of d_in / `block_size` × `block_size` (`block_size` − 1) / 2 "
                     "(`block_share`: one block) + head"),
        via="peft",
    )

    def span(self, params: OftParams) -> int:
        """The width that must divide every targeted input width: one rotation block."""
        return params.block_size

    def check(self, params: OftParams, spec: ArchSpec | None, model_type: str) -> None:
        self.check_row_targets(params, spec, model_type)
        if spec is not None:
            check_block_size(self.name, "block_size", self.span(params),
                             spec_input_widths(spec, self.targets(params, model_type)), model_type)

    def checked_targets(self, params: OftParams, model: nn.Module) -> list[str]:
        """The targets, once the loaded model's own widths take the block size (an architecture
        without a spec is checked here, after loading, but still before peft adjusts anything)."""
        targets = self.targets(params, model.config.model_type)
        check_block_size(self.name, "block_size", self.span(params), model_input_widths(model, targets),
                         model.config.model_type)
        return targets

    def peft_config(self, params: OftParams, model: nn.Module, spec: ArchSpec | None) -> OFTConfig:
        return seq_cls_config(OFTConfig, model, spec, r=0, oft_block_size=params.block_size,
                              block_share=params.block_share, target_modules=self.checked_targets(params, model))

    def derived_trainable(self, params: OftParams, spec: ArchSpec) -> int:
        """Per targeted linear, the upper triangle of each block's skew-symmetric matrix
        (b (b - 1) / 2) for each of its d_in / b blocks (one with ``block_share``), plus the head."""
        b = params.block_size
        linears = targeted_linears(spec, self.targets(params, spec.family)).values()
        return sum((1 if params.block_share else d_in // b) * b * (b - 1) // 2 for d_in, _, _ in linears) + spec.head

    def flow(self, params: OftParams, spec: ArchSpec) -> Flow:
        """The rotation is built each step (d_in x b values: d_in / b blocks of b x b) and applied to
        the input: the input is kept for the rotation's gradient, the rotation for the input's, as a
        weight delta is (block linears only: BERT's pooler is part of the head). Not counted: the
        Cayley-Neumann series' intermediates (a few b x b matrices per block, once per step; 5-6% of
        a tiny model's count, negligible at real widths and batches)."""
        targets = self.targets(params, spec.family)
        b = params.block_size
        return Flow(delta={n: spec.layer_linears[n][0] * b for n in block_linears(spec, targets)})


REGISTERED = (Oft,)
