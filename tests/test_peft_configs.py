"""The peft configs peftlab's methods build, field for field, and their shared check and load.

Every peft method (lora, qlora, ia3, prompt/p/prefix tuning) builds its config through one shared
builder in ``peftlab.methods.peft_common``; this pins what comes out of it to the configs written
out by hand with peft's own classes, so a refactor of the builder cannot silently change a field
(a changed rank, dropout, head or task type would change what trains).
"""

from __future__ import annotations

from typing import Any

import pytest
from peft import (
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
)
from transformers import AutoModelForSequenceClassification

from peftlab.infra.errors import PeftlabError
from peftlab.methods import METHODS
from peftlab.estimate.params import arch_spec

#: (method, params, family) -> (peft config class, the fields besides task type and head)
CASES: list[tuple[str, dict[str, Any], str, type, dict[str, Any]]] = [
    ("lora", {}, "bert", LoraConfig,
     {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.1, "target_modules": ["query", "value"]}),
    ("lora", {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj"]}, "llama", LoraConfig,
     {"r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj"]}),
    ("qlora", {"r": 2}, "llama", LoraConfig,
     {"r": 2, "lora_alpha": 16.0, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}),
    ("prefix_tuning", {}, "bert", PrefixTuningConfig,
     {"num_virtual_tokens": 10, "prefix_projection": False, "encoder_hidden_size": None}),
    ("prefix_tuning", {"num_virtual_tokens": 3, "projection": True, "encoder_hidden_size": 16}, "llama",
     PrefixTuningConfig, {"num_virtual_tokens": 3, "prefix_projection": True, "encoder_hidden_size": 16}),
    ("ia3", {}, "bert", IA3Config,
     {"target_modules": ["key", "output.dense", "value"], "feedforward_modules": ["output.dense"]}),
    ("ia3", {"target_modules": ["q_proj", "down_proj"], "feedforward_modules": ["down_proj"]}, "llama", IA3Config,
     {"target_modules": ["q_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
    ("prompt_tuning", {"init": "random", "num_virtual_tokens": 3}, "bert", PromptTuningConfig,
     {"num_virtual_tokens": 3, "prompt_tuning_init": PromptTuningInit.RANDOM, "prompt_tuning_init_text": None,
      "tokenizer_name_or_path": None}),
    ("p_tuning", {"encoder": "lstm", "encoder_hidden_size": 8}, "llama", PromptEncoderConfig,
     {"num_virtual_tokens": 10, "encoder_reparameterization_type": PromptEncoderReparameterizationType.LSTM,
      "encoder_hidden_size": 8, "encoder_num_layers": 2}),
]


@pytest.fixture(scope="module")
def models(tiny_backbones) -> dict[str, Any]:
    return {f: AutoModelForSequenceClassification.from_pretrained(tiny_backbones[f]) for f in ("bert", "llama")}


@pytest.mark.parametrize("name, kw, family, config_class, fields", CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_built_config_equals_hand_written(models, name, kw, family, config_class, fields):
    model = models[family]
    method = METHODS.get(name)
    spec = arch_spec(model.config)
    built = method.peft_config(method.Params(**kw), model, spec)
    expected = config_class(task_type=TaskType.SEQ_CLS, modules_to_save=list(spec.head_modules), **fields)
    assert type(built) is config_class
    assert built.to_dict() == expected.to_dict()


def test_prompt_tuning_text_init_names_the_backbone_tokenizer(models, tiny_backbones):
    model = models["bert"]
    method = METHODS.get("prompt_tuning")
    built = method.peft_config(method.Params(init_text="good or bad"), model, arch_spec(model.config))
    assert built.prompt_tuning_init == PromptTuningInit.TEXT and built.prompt_tuning_init_text == "good or bad"
    assert built.tokenizer_name_or_path == tiny_backbones["bert"] and built.modules_to_save == ["bert.pooler.dense", "classifier"]


@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_truncated_adapter_is_one_line_peftlab_error(models, tmp_path, name):
    """lora shares PeftMethod's load: a truncated adapter file is the user's problem (exit 2), not a
    SafetensorError traceback (which lora's own copy of load let through)."""
    model = AutoModelForSequenceClassification.from_config(models["bert"].config)
    method = METHODS.get(name)
    params = method.Params()
    method.save(method.prepare(model, params, arch_spec(model.config)), params, tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    fresh = AutoModelForSequenceClassification.from_config(models["bert"].config)
    with pytest.raises(PeftlabError, match="cannot load adapter") as info:
        method.load(fresh, params, None, tmp_path / "a")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, field", [("lora", "lora"), ("qlora", "lora"), ("ia3", "ia3")])
def test_targets_matching_no_linear_are_refused_before_loading(models, name, field):
    if name == "qlora":
        pytest.importorskip("bitsandbytes")
    method = METHODS.get(name)
    params = method.Params(target_modules=["nowhere"])
    spec = arch_spec(models["bert"].config)
    with pytest.raises(PeftlabError, match=rf"^config error: {field}\.target_modules: \['nowhere'\] match no linear "
                                           r"layer of this bert backbone$"):
        method.check(params, spec, "bert")
    method.check(params, None, "bert")  # no closed forms for the architecture: left to peft
