"""``boft``: BOFT (Liu et al., 2024, butterfly orthogonal finetuning), through peft.

OFT's block-diagonal rotation of each targeted linear's input, made denser by ``n_butterfly_factor``
block-diagonal rotations interleaved with butterfly permutations (one factor: OFT's rotation), and a
trained scale per output, ``y = s * (W (R x)) + bias``. Each rotation block is the Cayley transform
of the skew part of a trained ``block_size`` x ``block_size`` matrix (peft stores the whole matrix:
b^2 values per block, of which b (b - 1) / 2 reach the skew part). R starts at zero and s at one,
so training starts from the base model; both fold into W (``merges``). The head is trained too
(peft's ``modules_to_save``); saved in peft's format.

peft builds more than one butterfly factor only with its CUDA extension (``fbd_cuda``, compiled on
first use); without it, it trains one factor while its saved config says more. peftlab refuses a
factor above one where the extension does not load, instead of training another model.
"""

from __future__ import annotations

from typing import Literal

from peft import BOFTConfig
from peft.tuners.boft.layer import get_fbd_cuda
from peft.utils.constants import TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING as BOFT_TARGETS
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.estimate.params import ArchSpec, targeted_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Readme
from peftlab.methods.oft import Oft
from peftlab.methods.peft_common import seq_cls_config


class BoftParams(MethodParams):
    method: Literal["boft"] = "boft"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-2
    #: rotation block width b (even): block_size x 2^(n_butterfly_factor - 1) must divide every
    #: targeted linear's input width; each factor costs d_in x b values per linear
    block_size: int = Field(default=8, ge=2)
    #: butterfly factors (1: OFT's single block-diagonal rotation); above 1 needs peft's CUDA extension
    n_butterfly_factor: int = Field(default=1, ge=1)
    #: linear names (peft's suffix rule); None: peft's per-architecture defaults (attention query/value)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class Boft(Oft):
    """OFT's targets and block-size checks (one factor is OFT's rotation), its own rotation and count."""

    name = "boft"
    Params = BoftParams
    default_targets = BOFT_TARGETS
    peft_type = "BOFT"
    merges = True
    composition = None  # rotations multiply: adapters do not add up to a sum of updates
    table_order = 170
    readme = Readme(
        on="text",
        trains=("BOFT: per targeted linear (peft's default: attention query/value) `n_butterfly_factor` "
                "block-diagonal rotations of its input (blocks of `block_size`, Cayley transforms) between "
                "butterfly permutations, and a scale per output; the head"),
        closed_form=("sum over targeted linears of `n_butterfly_factor` × d_in × `block_size` + d_out + head "
                     "(peft stores whole blocks; their skew parts train)"),
        via="peft",
    )

    def span(self, params: BoftParams) -> int:
        """The width the butterfly's blocks cover together: it must divide every input width."""
        return params.block_size * 2 ** (params.n_butterfly_factor - 1)

    def check(self, params: BoftParams, spec: ArchSpec | None, model_type: str) -> None:
        if params.block_size % 2 and params.n_butterfly_factor > 1:
            raise PeftlabError(f"config error: boft.block_size: {params.block_size} must be even with "
                               f"n_butterfly_factor {params.n_butterfly_factor}")
        super().check(params, spec, model_type)
        if params.n_butterfly_factor > 1 and get_fbd_cuda() is None:
            raise PeftlabError(f"config error: boft.n_butterfly_factor: {params.n_butterfly_factor} needs peft's "
                               "CUDA extension fbd_cuda, which does not load here (peft would train 1 factor)")

    def peft_config(self, params: BoftParams, model: nn.Module, spec: ArchSpec | None) -> BOFTConfig:
        return seq_cls_config(BOFTConfig, model, spec, boft_block_size=params.block_size, boft_block_num=0,
                              boft_n_butterfly_factor=params.n_butterfly_factor,
                              target_modules=self.checked_targets(params, model))

    def derived_trainable(self, params: BoftParams, spec: ArchSpec) -> int:
        """Per targeted linear, each factor's d_in / b blocks of b x b (boft_R) and one scale per
        output (boft_s), plus the head."""
        linears = targeted_linears(spec, self.targets(params, spec.family)).values()
        return sum(params.n_butterfly_factor * d_in * params.block_size + d_out
                   for d_in, d_out, _ in linears) + spec.head

    def flow(self, params: BoftParams, spec: ArchSpec) -> Flow:
        """peft multiplies the factors into one full d_in x d_in rotation each step and applies it
        to the input: a weight delta of d_in^2 values (the input kept for its gradient, the rotation
        for the input's); the output scale keeps the unscaled output, as an (IA)^3 output scale
        does. Block linears only: BERT's pooler is part of the head. Not counted: the product's
        intermediates (about two more d_in x d_in matrices per linear, once per step, whether or not
        a gradient flows into the input): 12-14% of a tiny model's count, a few percent at MiniLM's
        widths and a batch of 16 x 128 tokens."""
        names = block_linears(spec, self.targets(params, spec.family))
        return Flow(delta={n: spec.layer_linears[n][0] ** 2 for n in names}, ia3={n: False for n in names})


REGISTERED = (Boft,)
