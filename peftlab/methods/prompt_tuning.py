"""``prompt_tuning``: learn ``num_virtual_tokens`` input embeddings prepended to every input
(Lester et al., 2021), through peft; the backbone stays frozen, the head trains.

``init: text`` starts the virtual tokens from the embeddings of ``init_text`` (repeated or cut to
length), which is usually more stable than random vectors; it needs the backbone's tokenizer,
found from the loaded model's own path (``config._name_or_path``).

Decoder backbones classify from the last position; with prompt methods peft feeds
``inputs_embeds``, so the model cannot find the last non-pad token and uses the last position:
pad such batches on the left.
"""

from __future__ import annotations

from typing import Literal

from peft import PromptTuningConfig, PromptTuningInit
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import PeftMethod, seq_cls_config
from peftlab.estimate.params import ArchSpec


class PromptTuningParams(MethodParams):
    method: Literal["prompt_tuning"] = "prompt_tuning"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-2
    num_virtual_tokens: int = Field(default=10, ge=1)
    init: Literal["random", "text"] = "text"
    init_text: str = Field(default="Classify the sentiment:", min_length=1)


def tokenizer_path(model: nn.Module) -> str:
    path = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not path:
        raise PeftlabError("prompt_tuning: init 'text' needs the backbone's tokenizer, but the model has no path")
    return str(path)


class PromptTuning(PeftMethod):
    name = "prompt_tuning"
    Params = PromptTuningParams
    peft_type = "PROMPT_TUNING"
    merges = False  # prompts add tokens, no weight to fold into
    composition = None
    table_order = 300
    readme = Readme(
        on="text",
        trains=("`num_virtual_tokens` (10) input embeddings prepended to the input, from `init_text`'s embeddings "
                "(`init: text`) or random; the head"),
        closed_form="`num_virtual_tokens` × d + head",
        via="peft",
    )

    def peft_config(self, params: PromptTuningParams, model: nn.Module, spec: ArchSpec | None) -> PromptTuningConfig:
        text = params.init == "text"
        return seq_cls_config(
            PromptTuningConfig, model, spec,
            num_virtual_tokens=params.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=params.init_text if text else None,
            tokenizer_name_or_path=tokenizer_path(model) if text else None,
        )

    def derived_trainable(self, params: PromptTuningParams, spec: ArchSpec) -> int:
        """One trained input embedding (width ``hidden``) per virtual token, plus the head."""
        return params.num_virtual_tokens * spec.hidden + spec.head

    def flow(self, params: PromptTuningParams, spec: ArchSpec) -> Flow:
        """The sequence grows by the virtual tokens, through which gradients reach every block."""
        return Flow(prompt_tokens=params.num_virtual_tokens)


REGISTERED = (PromptTuning,)
