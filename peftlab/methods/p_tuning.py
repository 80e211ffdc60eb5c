"""``p_tuning``: P-tuning (Liu et al., 2021) through peft: virtual-token embeddings produced by
a small trained encoder (MLP or bidirectional LSTM) instead of learned directly, which makes
optimisation smoother. Encoder and head train; the backbone stays frozen.

The encoder only matters in training: peft's saved adapter holds the encoder too, so a reload
reproduces the trained prompts exactly. For decoder backbones, see ``prompt_tuning`` on padding.
"""

from __future__ import annotations

from typing import Literal

from peft import PromptEncoderConfig, PromptEncoderReparameterizationType
from pydantic import Field
from torch import nn

from peftlab.config_base import MethodParams, PositiveFloat
from peftlab.methods.peft_common import PeftMethod, seq_cls_config
from peftlab.params import ArchSpec, p_tuning_params

#: peft's PromptEncoderConfig.encoder_num_layers default; used by the LSTM encoder only
LSTM_LAYERS = 2


class PTuningParams(MethodParams):
    method: Literal["p_tuning"] = "p_tuning"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-1
    num_virtual_tokens: int = Field(default=10, ge=1)
    encoder: Literal["mlp", "lstm"] = "mlp"
    #: hidden width of the prompt encoder; None = the backbone's hidden size (peft's default)
    encoder_hidden_size: int | None = Field(default=None, ge=1)


class PTuning(PeftMethod):
    name = "p_tuning"
    Params = PTuningParams

    def peft_config(self, params: PTuningParams, model: nn.Module, spec: ArchSpec | None) -> PromptEncoderConfig:
        kind = PromptEncoderReparameterizationType.MLP if params.encoder == "mlp" else PromptEncoderReparameterizationType.LSTM
        return seq_cls_config(PromptEncoderConfig, model, spec, num_virtual_tokens=params.num_virtual_tokens,
                              encoder_reparameterization_type=kind, encoder_hidden_size=params.encoder_hidden_size,
                              encoder_num_layers=LSTM_LAYERS)

    def derived_trainable(self, params: PTuningParams, spec: ArchSpec) -> int:
        enc = params.encoder_hidden_size or spec.hidden
        return p_tuning_params(spec, params.num_virtual_tokens, params.encoder, enc, LSTM_LAYERS) + spec.head
