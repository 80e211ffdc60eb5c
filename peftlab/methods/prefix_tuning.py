"""``prefix_tuning``: Prefix tuning (Li & Liang, 2021) through peft: trained key/value vectors
prepended in every attention layer (``num_virtual_tokens`` per layer), backbone frozen, head
trained.

``projection: true`` reparameterises the prefix as an embedding passed through a two-layer MLP
(width ``encoder_hidden_size``), the paper's recipe for stable training. With grouped-query
attention (Llama) the key/value width is kv_heads * head_dim, not the hidden size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from peft import PrefixTuningConfig
from pydantic import Field, model_validator
from torch import nn

from peftlab.estimate.activations import Flow
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.backbones.kv_cache import route_prefix_cache
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import PeftMethod, seq_cls_config
from peftlab.estimate.params import ArchSpec, is_text_head, linear_params, prefix_layers, prefix_token_dim


class PrefixTuningParams(MethodParams):
    method: Literal["prefix_tuning"] = "prefix_tuning"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-2
    num_virtual_tokens: int = Field(default=10, ge=1)
    projection: bool = False
    #: MLP width when projection is on; None = the key/value width (peft's default)
    encoder_hidden_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _projection_only(self) -> "PrefixTuningParams":
        if self.encoder_hidden_size is not None and not self.projection:
            raise ValueError("encoder_hidden_size is only used with projection: true")
        return self


def _routed(model: nn.Module, spec: ArchSpec | None) -> nn.Module:
    """A classifier gets the forward that passes the prefix as the cache (route_prefix_cache). An
    encoder-decoder under ``head: text`` keeps peft's own seq2seq forward: it passes the prefix to
    the decoder's self-attention and the input's own mask to the encoder, as the text head needs."""
    return model if is_text_head(spec) else route_prefix_cache(model)


class PrefixTuning(PeftMethod):
    name = "prefix_tuning"
    Params = PrefixTuningParams
    peft_type = "PREFIX_TUNING"
    merges = False
    composition = None
    table_order = 320
    readme = Readme(
        on="text",
        trains=("a key and a value vector per layer and virtual token (`num_virtual_tokens`), optionally through "
                "a two-layer MLP (`projection: true`); the head"),
        closed_form=("n × L × 2 × d_kv + head (d_kv = kv_heads × head_dim; T5: L = decoder blocks); projection: "
                     "n × d_kv + Linear(d_kv, e) + Linear(e, 2 L d_kv) + head"),
        via="peft",
    )

    def peft_config(self, params: PrefixTuningParams, model: nn.Module, spec: ArchSpec | None) -> PrefixTuningConfig:
        # an encoder-decoder's prefix sits in its decoder (peftlab.backbones.encoder_decoder): peft would size
        # it by the encoder's depth and d_model, not the decoder's depth and T5's heads x d_kv
        shape = ({"num_layers": prefix_layers(spec), "token_dim": prefix_token_dim(spec)}
                 if spec is not None and spec.extra_stacks else {})
        return seq_cls_config(PrefixTuningConfig, model, spec, num_virtual_tokens=params.num_virtual_tokens,
                              prefix_projection=params.projection, encoder_hidden_size=params.encoder_hidden_size,
                              **shape)

    def prepare(self, model: nn.Module, params: PrefixTuningParams, spec: ArchSpec | None) -> nn.Module:
        return _routed(super().prepare(model, params, spec), spec)

    def load(self, model: nn.Module, params: PrefixTuningParams, spec: ArchSpec | None, directory: Path) -> nn.Module:
        return _routed(super().load(model, params, spec, directory), spec)

    def derived_trainable(self, params: PrefixTuningParams, spec: ArchSpec) -> int:
        """peft's ``PrefixEncoder``: a key and a value per layer and virtual token, plus the head.

        Without projection the prefix itself is the parameter: n x (layers * 2 * d). With projection,
        an n x d embedding feeds Linear(d, enc) -> Tanh -> Linear(enc, layers * 2 * d), biases
        included; ``d`` is :func:`~peftlab.estimate.params.prefix_token_dim` and ``enc`` defaults to ``d`` (as in peft).
        """
        n, d = params.num_virtual_tokens, prefix_token_dim(spec)
        out = prefix_layers(spec) * 2 * d
        if not params.projection:
            return n * out + spec.head
        enc = params.encoder_hidden_size or d
        return n * d + linear_params(d, enc, True) + linear_params(enc, out, True) + spec.head

    def flow(self, params: PrefixTuningParams, spec: ArchSpec) -> Flow:
        """With projection, the encoder keeps its input (d) and its Tanh output (enc) per token and example."""
        d = prefix_token_dim(spec)
        enc = (params.encoder_hidden_size or d) if params.projection else 0
        out = 2 * spec.num_layers * d  # a key and a value of width d per block
        return Flow(prefix_tokens=params.num_virtual_tokens, prefix_encoder_values=d + enc if params.projection else 0,
                    encoder_weights=enc * (d + out))


REGISTERED = (PrefixTuning,)
