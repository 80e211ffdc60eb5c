"""``qlora``: LoRA on a base model loaded quantised by bitsandbytes (Dettmers et al., 2023).

The frozen base is stored in 4-bit NF4 (``bits: 4``, optionally with double quantisation of the
block statistics) or 8-bit (``bits: 8``, LLM.int8); the LoRA matrices and the head train in fp32.
Because quantisation happens at load time, the runner must load the base with
``load_classifier(..., extra_kwargs=method.load_kwargs(params, head_names))``; ``prepare`` refuses
an unquantised model rather than silently running plain LoRA. The head modules are kept out of
quantisation (``llm_int8_skip_modules``): a new head must train, and on CPU bitsandbytes cannot
even build a Linear4bit head of this size.

On a CPU the row runs without autocast whatever ``train.mixed_precision`` says
(:func:`cpu_quantised_fp32`); on CUDA it follows the setting.

Parameter counts are logical (a 4-bit weight counts as one parameter, see
:func:`peftlab.estimate.params.count_params`), so they equal ``lora``'s; memory differs, which
:func:`peftlab.estimate.params.base_weight_bytes` reports.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Readme
from peftlab.methods.lora import Lora, LoraParams
from peftlab.estimate.activations import Flow
from peftlab.estimate.params import ArchSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class QloraParams(LoraParams):
    method: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    # lr: LoRA's default (the same adapter; bench/method_defaults.py searches it once)
    bits: Literal[4, 8] = 4
    #: 4-bit only: quantise the per-block absmax statistics too (~0.4 bit per weight saved)
    double_quant: bool = True
    #: 4-bit only: dtype the dequantised weights are multiplied in
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    dropout: float = Field(default=0.05, ge=0, lt=1)

    REFUSED_INITS: ClassVar[dict[str, str]] = {
        # peft 0.21's LoftQ (peft.utils.loftq_utils) computes on compute_device="cuda", hardcoded,
        # and needs the base's unquantised safetensors file: not runnable on the CPU path peftlab tests
        "loftq": "not supported yet: peft's LoftQ runs on CUDA only (peft.utils.loftq_utils)",
        # both rewrite the base weight to W - s B0 A0; on a quantised base that re-quantises the
        # residual, so no adapter saved against the original base reproduces the trained model
        "pissa": "PiSSA rewrites the base weights, which qlora keeps quantised; use method lora",
        "olora": "OLoRA rewrites the base weights, which qlora keeps quantised; use method lora",
    }


def check_quantize(quantize: str) -> None:
    """One line, before anything loads, when ``quantize`` needs bitsandbytes and it is missing."""
    if quantize == "none":
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise PeftlabError(f"quantize: {quantize} needs bitsandbytes (pip install 'bitsandbytes>=0.50'), "
                           f"which cannot be imported ({exc})") from None


def _bitsandbytes() -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise PeftlabError(f"qlora needs bitsandbytes (pip install 'bitsandbytes>=0.50'): {exc}") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig


def is_quantised(model: nn.Module) -> bool:
    return any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def cpu_quantised_fp32(device_type: str) -> str | None:
    """Why bitsandbytes layers on a CPU compute without autocast (None on CUDA, where QLoRA under
    bf16 autocast is the usual recipe).

    A 4-bit layer dequantises its weight and multiplies in its own ``compute_dtype`` (the row's
    ``compute_dtype``, fp32 by default); autocast on top silently overrides that choice, and the CPU
    probe times plain matmuls, not dequantise-then-multiply, so its verdict does not carry over.
    8-bit layers run LLM.int8's own integer path. Set ``compute_dtype: bfloat16`` for bf16.
    """
    if device_type != "cpu":
        return None
    return "bitsandbytes layers on CPU: fp32 autocast-free (their own compute_dtype decides)"


def disable_cpu_repacking(model: nn.Module) -> None:
    """Turn off bitsandbytes' CPU inference fast path for 4-bit layers.

    On CPUs with AVX512-BF16, Linear4bit repacks its weight in place (bf16 block statistics) on
    the first no-grad forward in eval mode; the next training forward then fails inside
    ``matmul_4bit`` ("a view of a leaf Variable that requires grad..."), and it needs
    in_features >= the 64-value block size. We alternate training and evaluation, so we keep the
    standard layout; results are also then the same on every CPU.
    """
    for mod in model.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False


class Qlora(Lora):
    name = "qlora"
    Params = QloraParams
    runs_on = ("text",)
    table_order = 110
    readme = Readme(
        on="text",
        trains=("`lora` on a base loaded quantised (`bits: 4`: NF4, double-quantised unless `double_quant: "
                "false`; `bits: 8`: LLM.int8); LoRA and head in fp32; `lora`'s options except `init: pissa | "
                "olora` (they rewrite the quantised base) and `loftq` (refused: peft's LoftQ runs on CUDA only)"),
        closed_form="as `lora` (a quantised weight counts as one parameter)",
        via="peft, bitsandbytes",
    )
    shards = False  # bitsandbytes' packed integer weights are not FSDP-shardable (untested)

    def check(self, params: QloraParams, spec: ArchSpec | None, model_type: str) -> None:
        _bitsandbytes()
        super().check(params, spec, model_type)

    def flow(self, params: QloraParams, spec: ArchSpec) -> Flow:
        """LoRA's, on bitsandbytes' frozen linears (no low-precision weight copies under autocast; their
        outputs keep their inputs' dtype)."""
        return dataclasses.replace(super().flow(params, spec), quantized_base=True)

    def keeps_fp32(self, params: QloraParams, device_type: str) -> str | None:
        return cpu_quantised_fp32(device_type)

    def load_kwargs(self, params: QloraParams, head_names: tuple[str, ...]) -> dict[str, Any]:
        bnb_config = _bitsandbytes()
        skip = list(head_names)
        if params.bits == 8:
            return {"quantization_config": bnb_config(load_in_8bit=True, llm_int8_skip_modules=skip)}
        return {"quantization_config": bnb_config(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=params.double_quant,
            bnb_4bit_compute_dtype=DTYPES[params.compute_dtype],
            llm_int8_skip_modules=skip,
        )}

    def prepare(self, model: nn.Module, params: QloraParams, spec: ArchSpec | None) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        if not is_quantised(model):
            raise PeftlabError(
                "qlora: the base model is not quantised; load it with "
                "load_classifier(..., extra_kwargs=method.load_kwargs(params, head_names))"
            )
        disable_cpu_repacking(model)
        # freezes the base, keeps norms/head in fp32; no gradient checkpointing (our models are small
        # and checkpointing would distort the time/memory comparison with plain lora)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().prepare(model, params, spec)

    def load(self, model: nn.Module, params: QloraParams, spec: ArchSpec | None, directory: Any) -> nn.Module:
        if not is_quantised(model):
            raise PeftlabError("qlora: load the base quantised (method.load_kwargs) before loading the adapter")
        disable_cpu_repacking(model)
        return super().load(model, params, spec, directory)


REGISTERED = (Qlora,)
