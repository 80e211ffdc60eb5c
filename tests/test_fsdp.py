"""FSDP2: ``accelerate launch --use_fsdp --fsdp_version 2 -m peftlab run CONFIG`` on 2 CPU processes (gloo).

The same comparison as tests/test_distributed.py (2 processes x batch 4 = 1 process x batch 8,
dropout off, tolerance 1e-4), but every parameter is sharded across the two processes (each
transformer layer its own FSDP unit): training, evaluation through the sharded model, and the
saved adapters, gathered from the shards, must equal the single-process run's; the adapters must
be complete (every trained tensor, full shape) and load back in ``peftlab predict``. The result
records ``fsdp_processes`` only when the trained parameters really were shards (DTensors).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from accelerate.utils import DistributedType

from peftlab.infra.errors import PeftlabError
from peftlab.methods import METHODS
from peftlab.runners.sharded import refuse_unsupported, unsharded_copy, use_sharding

from test_distributed import TWO_METHODS, ROOT, config, free_port, result, setup, two_equal_one  # noqa: F401 (fixture)

#: no layer class named: peftlab finds BertLayer (accelerate's own choice fails on BERT, see wrap_blocks)
FSDP2 = ("--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
#: one method of each kind: all weights, peft LoRA, a peft prompt method, a peftlab bottleneck adapter
SHARDED = [*TWO_METHODS, {"method": "prefix_tuning", "num_virtual_tokens": 4, "projection": False, "lr": 5e-2},
           {"method": "houlsby", "reduction_factor": 4, "nonlinearity": "relu", "lr": 5e-2}]
TEXTS = ["the drug was good", "awful pain", "meh day", "really great sleep"]


def probabilities(method_dir: Path) -> np.ndarray:
    from peftlab.runners.predict import load_predictor

    return np.asarray(load_predictor(method_dir, False).probabilities(TEXTS))


def test_fsdp2_two_processes_equal_one_and_save_complete_adapters(setup: Path) -> None:
    fsdp_out = setup / "fsdp"
    two_equal_one(setup, "fsdp", FSDP2, SHARDED)  # saved tensors complete: same keys and shapes as one process
    for name in (m["method"] for m in SHARDED):
        assert result(fsdp_out, name)["details"]["fsdp_processes"] == 2  # really sharded
        assert "fsdp_processes" not in result(setup / "one", name)["details"]
        np.testing.assert_allclose(probabilities(fsdp_out / name), probabilities(setup / "one" / name), atol=1e-4)

    rank0 = (setup / "audit.rank0").read_text().splitlines()
    rank1 = (setup / "audit.rank1").read_text().splitlines()
    assert any("adapter" in line for line in rank0)  # the audit hook sees the writes...
    assert rank1 == [], rank1[:5]  # ...and only rank 0 makes them
    assert not list(fsdp_out.rglob("checkpoints"))  # none under FSDP (their optimizer state would be shards)


@pytest.mark.parametrize("env, method, match", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "lora", "DeepSpeed: not supported"),
    ({"ACCELERATE_USE_FSDP": "true"}, "lora", "FSDP version 1: only FSDP2 is supported"),  # accelerate's default
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "full", "FSDP version 1: only FSDP2 is supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "qlora", "qlora: cannot be trained under FSDP"),
])
def test_unsupported_sharded_launches_are_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                              method: str, match: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(PeftlabError, match=match) as err:
        refuse_unsupported(METHODS.get(method))
    assert "\n" not in str(err.value)


def test_fsdp2_and_plain_launches_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_unsupported(METHODS.get("qlora"))  # no launcher: nothing to refuse
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    refuse_unsupported(METHODS.get("lora"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # a single process is never switched to FSDP
    assert use_sharding(SimpleNamespace(distributed_type=DistributedType.NO)) is False


def test_every_model_gets_its_own_blocks_wrapped(tiny_backbones: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """accelerate keeps the first model's policy on the shared plugin; each model gets its own blocks."""
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers import AutoModelForSequenceClassification

    from peftlab.runners.sharded import wrap_blocks

    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    plugin = SimpleNamespace(auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={int}),
                             transformer_cls_names_to_wrap=["BertLayer"])
    acc = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
    expected = {"bert": "BertLayer", "roberta": "RobertaLayer", "llama": "LlamaDecoderLayer"}
    for family, path in tiny_backbones.items():
        wrap_blocks(acc, AutoModelForSequenceClassification.from_pretrained(path))
        assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
        assert plugin.transformer_cls_names_to_wrap == [expected[family]]
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "BertLayer,BertEmbeddings")  # the user's choice wins
    wrap_blocks(acc, AutoModelForSequenceClassification.from_pretrained(tiny_backbones["llama"]))
    assert plugin.transformer_cls_names_to_wrap == ["BertLayer", "BertEmbeddings"]


def test_an_unsharded_model_is_returned_as_is() -> None:
    """The cached linear probe and single-process runs never hold shards: no reload, no copy."""
    model = torch.nn.Linear(3, 2)
    assert unsharded_copy(model, lambda: pytest.fail("rebuilt an unsharded model")) is model


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_fsdp2_on_two_gpus(setup: Path) -> None:
    """The CUDA path (NCCL, bf16 mixed precision policy): trains sharded, saves adapters that load."""
    cfg = config(setup, "fsdp_cuda", batch_size=4)
    raw = yaml.safe_load(cfg.read_text())
    raw["train"]["device"] = "cuda"
    cfg.write_text(yaml.safe_dump(raw))
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", *FSDP2,
           "--main_process_port", str(free_port()), "-m", "peftlab", "run", str(cfg), "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("full", "lora"):
        r = result(setup / "fsdp_cuda", name)
        assert r["status"] == "ok" and r["details"]["fsdp_processes"] == 2
        assert np.isfinite(probabilities(setup / "fsdp_cuda" / name)).all()
