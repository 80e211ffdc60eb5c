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

from peftlab.estimate.activations import Flow
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import PeftMethod, seq_cls_config
from peftlab.estimate.params import ArchSpec, linear_params

#: peft's PromptEncoderConfig.encoder_num_layers default; used by the LSTM encoder only
LSTM_LAYERS = 2


class PTuningParams(MethodParams):
    method: Literal["p_tuning"] = "p_tuning"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 3.16e-2
    num_virtual_tokens: int = Field(default=10, ge=1)
    encoder: Literal["mlp", "lstm"] = "mlp"
    #: hidden width of the prompt encoder; None = the backbone's hidden size (peft's default)
    encoder_hidden_size: int | None = Field(default=None, ge=1)


class PTuning(PeftMethod):
    name = "p_tuning"
    Params = PTuningParams
    peft_type = "P_TUNING"
    merges = False
    composition = None
    table_order = 310
    readme = Readme(
        on="text",
        trains=("virtual-token embeddings produced by a trained prompt `encoder`: `mlp` (3 linears of width "
                "`encoder_hidden_size`, default d) or `lstm` (2-layer bidirectional LSTM + 2 linears); the head"),
        closed_form="`num_virtual_tokens` × d + the encoder's weights and biases + head",
        via="peft",
    )

    def peft_config(self, params: PTuningParams, model: nn.Module, spec: ArchSpec | None) -> PromptEncoderConfig:
        kind = PromptEncoderReparameterizationType.MLP if params.encoder == "mlp" else PromptEncoderReparameterizationType.LSTM
        return seq_cls_config(PromptEncoderConfig, model, spec, num_virtual_tokens=params.num_virtual_tokens,
                              encoder_reparameterization_type=kind, encoder_hidden_size=params.encoder_hidden_size,
                              encoder_num_layers=LSTM_LAYERS)

    def derived_trainable(self, params: PTuningParams, spec: ArchSpec) -> int:
        """The virtual-token embedding plus peft's prompt encoder (``PromptEncoder``), plus the head.

        MLP: Linear(h, e) -> ReLU -> Linear(e, e) -> ReLU -> Linear(e, h). LSTM: a bidirectional
        ``LSTM_LAYERS``-layer LSTM (input h, then 2e) followed by Linear(2e, 2e) -> ReLU -> Linear(2e, h).
        """
        h, e = spec.hidden, params.encoder_hidden_size or spec.hidden
        n = params.num_virtual_tokens * h
        if params.encoder == "mlp":
            encoder = linear_params(h, e, True) + linear_params(e, e, True) + linear_params(e, h, True)
        else:  # per direction and layer: 4 gates x (W_ih: e x d_in, W_hh: e x e, b_ih + b_hh: 2e)
            lstm = sum(2 * 4 * (e * d_in + e * e + 2 * e) for d_in in [h] + [2 * e] * (LSTM_LAYERS - 1))
            encoder = lstm + linear_params(2 * e, 2 * e, True) + linear_params(2 * e, h, True)
        return n + encoder + spec.head

    def flow(self, params: PTuningParams, spec: ArchSpec) -> Flow:
        """The MLP encoder keeps its input (h) and two ReLU outputs (e) per virtual token (computed once
        per step, then repeated over the batch);
        the LSTM encoder's oneDNN workspace is not counted (about 10 values of width e per direction
        and layer are, an under-count of a few hundred KB at most: only 10-odd tokens go through it)."""
        e, h = params.encoder_hidden_size or spec.hidden, spec.hidden
        mlp = params.encoder == "mlp"
        per_token = h + 2 * e if mlp else h + 2 * 2 * 10 * e + 2 * 2 * e
        return Flow(prompt_tokens=params.num_virtual_tokens, prompt_encoder_values=per_token,
                    encoder_weights=e * (2 * h + e) if mlp else 0, autocast_followed=mlp)


REGISTERED = (PTuning,)
