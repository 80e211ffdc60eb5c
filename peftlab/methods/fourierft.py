"""``fourierft``: FourierFT (Gao et al., 2024, parameter-efficient fine-tuning with the discrete
Fourier transform), through peft.

Each targeted linear learns ``n_frequency`` spectral coefficients at fixed random positions of its
d_out x d_in frequency grid (drawn from ``random_loc_seed``, the same for every linear of that
shape); its update is the real part of their inverse 2-D DFT, times ``scaling``: the same number
of trained values per linear, whatever its size. The coefficients start at zero, so training
starts from the base model. The head is trained too (peft's ``modules_to_save``); saved in peft's
format (the positions are regenerated from the seed on load).
"""

from __future__ import annotations

from typing import Literal

from peft import FourierFTConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING as FOURIERFT_TARGETS
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.estimate.params import ArchSpec, targeted_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import TargetedPeftMethod, seq_cls_config


class FourierftParams(MethodParams):
    method: Literal["fourierft"] = "fourierft"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-2
    #: trained coefficients per targeted linear (peft's default, the paper's RoBERTa setting); at
    #: most d_in x d_out of every targeted linear
    n_frequency: int = Field(default=1000, ge=1)
    #: the update's scale (peft's default; the paper: 100-150 for RoBERTa, 300 for LLaMA)
    scaling: PositiveFloat = 150.0
    #: seed of the coefficients' positions
    random_loc_seed: int = 777
    #: linear names (peft's suffix rule); None: peft's per-architecture defaults (attention query/value)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class Fourierft(TargetedPeftMethod):
    name = "fourierft"
    Params = FourierftParams
    default_targets = FOURIERFT_TARGETS
    peft_type = "FOURIERFT"
    merges = True
    composition = None  # each adapter's positions come from its seed: sums are not modelled
    table_order = 180
    readme = Readme(
        on="text",
        trains=("FourierFT: per targeted linear (peft's default: attention query/value) `n_frequency` "
                "spectral coefficients at random fixed positions; the update is their inverse 2-D DFT × "
                "`scaling`; the head"),
        closed_form="`n_frequency` × targeted linears + head",
        via="peft",
    )

    def check(self, params: FourierftParams, spec: ArchSpec | None, model_type: str) -> None:
        """Refuse more coefficients than a targeted linear's d_in x d_out grid holds (peft raises it
        deep inside, after loading)."""
        self.check_row_targets(params, spec, model_type)
        if spec is None:
            return
        for name, (d_in, d_out, _) in targeted_linears(spec, self.targets(params, model_type)).items():
            if params.n_frequency > d_in * d_out:
                raise PeftlabError(f"config error: fourierft.n_frequency: {params.n_frequency} exceeds the "
                                   f"{d_out} x {d_in} = {d_in * d_out} weights of {name} ({model_type})")

    def peft_config(self, params: FourierftParams, model: nn.Module, spec: ArchSpec | None) -> FourierFTConfig:
        return seq_cls_config(FourierFTConfig, model, spec, n_frequency=params.n_frequency, scaling=params.scaling,
                              random_loc_seed=params.random_loc_seed,
                              target_modules=self.targets(params, model.config.model_type))

    def derived_trainable(self, params: FourierftParams, spec: ArchSpec) -> int:
        """``n_frequency`` coefficients per targeted linear, plus the head; the positions are buffers."""
        return params.n_frequency * len(targeted_linears(spec, self.targets(params, spec.family))) + spec.head

    def flow(self, params: FourierftParams, spec: ArchSpec) -> Flow:
        """The update is built as a full d_out x d_in matrix each step (the inverse DFT of the
        scattered coefficients) and applied to the input: a weight delta per adapted linear
        (block linears only: BERT's pooler is part of the head)."""
        targets = self.targets(params, spec.family)
        delta = {n: spec.layer_linears[n][0] * spec.layer_linears[n][1] for n in block_linears(spec, targets)}
        return Flow(delta=delta)


REGISTERED = (Fourierft,)
