"""``icl``: in-context classification with a causal LM, nothing trained.

Each label is scored by the log-likelihood of its verbalizer continuation after a prompt of an
instruction, ``shots`` demonstrations and the query (see :mod:`peftlab.icl.scoring`). The row
runs through the ``icl`` runner (:mod:`peftlab.runners.icl`), not the training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from peftlab.estimate.activations import Flow, full_flow
from peftlab.estimate.params import ArchSpec
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Method, Readme
from peftlab.methods.qlora import check_quantize, cpu_quantised_fp32
from peftlab.prompts import load_template


class IclParams(MethodParams):
    method: Literal["icl"] = "icl"
    #: demonstrations per prompt (0 = zero-shot)
    shots: int = Field(default=0, ge=0, le=64)
    selection: Literal["random", "balanced", "nearest"] = "balanced"
    #: one run per demonstration seed; the row reports their mean and spread
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    #: a shipped template (sentiment, nli) or a YAML file; the fields below override its parts
    template: str = "sentiment"
    instruction: str | None = None
    example: str | None = None
    verbalizers: dict[str, list[str] | str] | None = None
    #: render through the tokenizer's chat template: auto = when the tokenizer has one
    chat: Literal["auto", "on", "off"] = "auto"
    #: continuation score: summed log-likelihood, per character (lm-eval acc_norm), per token
    normalize: Literal["sum", "char", "token"] = "sum"
    #: contextual calibration (Zhao et al. 2021): divide out the content-free label prior
    calibrate: bool = False
    temperature: PositiveFloat = 1.0
    #: chain of thought (greedy) or self-consistency (``samples`` sampled chains, majority vote)
    reasoning: Literal["none", "cot", "self_consistency"] = "none"
    samples: int = Field(default=5, ge=1, le=64)
    sample_temperature: PositiveFloat = 0.7
    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    #: demonstrations longer than this many characters are cut (keeps k-shot prompts short)
    max_demo_chars: int | None = Field(default=600, ge=16)
    batch_size: int = Field(default=8, ge=1)
    #: load the LM quantised with bitsandbytes to fit memory
    quantize: Literal["none", "4bit", "8bit"] = "none"
    #: sentence encoder for ``selection: nearest``
    embedder: str = "minilm-l6"


class Icl(Method):
    name = "icl"
    Params = IclParams
    runs_on = ("text",)
    composition = None
    table_order = 400
    readme = Readme(
        on="causal LMs",
        trains=("nothing: each label scored by the log-likelihood of its verbalizer after an instruction, `shots` "
                "demonstrations and the query"),
        closed_form="0",
    )
    runner = "icl"
    #: whether ``prepare_lm`` adds something that is trained and that ``save`` writes (an adapter)
    saves_adapter: ClassVar[bool] = False

    def check(self, params: Any, spec: ArchSpec | None, model_type: str) -> None:
        if spec is not None and not spec.is_decoder:
            raise PeftlabError(f"config error: {params.label}: {params.method} needs a causal LM backbone, "
                               f"and {model_type} is an encoder (set the row's backbone, e.g. smollm2-135m)")
        load_template(params.template, template_overrides(params))
        check_quantize(params.quantize)

    def keeps_fp32(self, params: Any, device_type: str) -> str | None:
        """A 4-/8-bit LM on CPU stays fp32, as qlora does (peftlab.methods.qlora.cpu_quantised_fp32)."""
        return cpu_quantised_fp32(device_type) if params.quantize != "none" else None

    def prepare_lm(self, model: Any, params: Any) -> Any:
        """Adapt the LM before scoring (add what ``lm_loss`` trains); in-context learning uses the
        LM as loaded."""
        return model

    def lm_loss(self, params: Any) -> Callable[[Any, dict[str, Any]], Any] | None:
        """``loss(model, batch)`` that the ``icl`` runner trains the prepared LM on before scoring
        (:mod:`peftlab.runners.lm_fit` owns the loop); None: nothing is trained."""
        return None

    def derived_trainable(self, params: Any, spec: ArchSpec) -> int:
        return 0

    def flow(self, params: Any, spec: ArchSpec) -> Flow:
        """Planned as a full fine-tuning step: an over-count (scoring runs no backward pass) that
        keeps the memory guard on the safe side until a forward-only count is written."""
        return full_flow(spec)


def template_overrides(params: IclParams) -> dict[str, Any]:
    return {"instruction": params.instruction, "example": params.example, "verbalizers": params.verbalizers}


REGISTERED = (Icl,)
