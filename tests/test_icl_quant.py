"""4-bit / 8-bit loading of the causal LM (bitsandbytes): on CPU here, on CUDA where there is one.

bitsandbytes 0.50 runs NF4 and LLM.int8 layers on CPU; peftlab keeps its standard 4-bit layout
(no CPU repacking), which also works at the tiny test dimensions.
"""

from __future__ import annotations

import sys

import pytest
import torch
import yaml

from conftest import run_cli, save_tiny_causal_lm
from peftlab.config import BackboneConfig, validate_raw
from peftlab.backbones.causal_lm import load_causal_lm
from peftlab.icl.scoring import PrefixScorer, encode_requests, score_brute

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> str:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm-q"), seed=3)


def _scores(model, tok_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    enc = encode_requests(tok, ["the drug was good so it", "it was not very bad the", "pain day"],
                          [[" good", " not very bad", " meh"]] * 3)
    return torch.tensor(PrefixScorer(model, 0, batch_size=2).score(enc)), torch.tensor(score_brute(model, enc))


def _check_quantised(tiny_lm_dir: str, quantize: str, layer: str, device: torch.device) -> None:
    fp32, _ = _scores(load_causal_lm(BackboneConfig(name=tiny_lm_dir), "none", torch.device("cpu")), tiny_lm_dir)
    model = load_causal_lm(BackboneConfig(name=tiny_lm_dir), quantize, device)
    assert type(model.model.layers[0].mlp.up_proj).__name__ == layer
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32  # head kept fp32
    cached, brute = _scores(model, tiny_lm_dir)
    torch.testing.assert_close(cached, brute, atol=1e-4, rtol=1e-5)
    diff = (cached.cpu() - fp32).abs()
    assert diff.max() < 0.5  # close to the fp32 model ...
    if quantize == "4bit":
        assert diff.max() > 1e-4  # ... but really quantised (NF4 changes every weight)


def test_4bit_on_cpu_scores_exactly_and_close_to_fp32(tiny_lm_dir):
    _check_quantised(tiny_lm_dir, "4bit", "Linear4bit", torch.device("cpu"))


def test_8bit_on_cpu_loads_and_scores(tiny_lm_dir):
    _check_quantised(tiny_lm_dir, "8bit", "Linear8bitLt", torch.device("cpu"))


def test_qlora_on_the_lm_trains_on_cpu(tiny_lm_dir, tiny_csv, tmp_path):
    """lm_lora with a 4-bit base (QLoRA trained to say the verbalizer) after a 4-bit icl row."""
    from peftlab.runners.experiment import run_experiment

    train, ev = tiny_csv
    row = {"backbone": tiny_lm_dir, "quantize": "4bit", "example": "{text} so it was", "batch_size": 4,
           "verbalizers": {"positive": " good", "negative": " bad", "neutral": " meh"}}
    cfg = validate_raw({
        "backbone": tiny_lm_dir, "task": {"source": "csv", "train_file": str(train), "eval_file": str(ev)},
        "methods": [{"method": "icl", "name": "icl4", **row}, {"method": "lm_lora", "name": "qlora_lm", "lr": 5e-3, **row}],
        "train": {"epochs": 1, "batch_size": 8, "num_threads": 1, "device": "cpu"}, "output_dir": str(tmp_path / "run"),
    })
    res = {r.name: r for r in run_experiment(cfg, quiet=True)}
    assert all(r.status == "ok" for r in res.values()), {n: r.error for n, r in res.items()}
    assert res["icl4"].params.trainable == 0
    q = res["qlora_lm"]
    assert 0 < q.params.trainable < q.params.total and q.epochs[0].train_loss > 0


def test_missing_bitsandbytes_is_one_line_exit_2(tiny_lm_dir, tiny_csv, tmp_path, monkeypatch):
    train, ev = tiny_csv
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "backbone": tiny_lm_dir, "task": {"source": "csv", "train_file": str(train), "eval_file": str(ev)},
        "methods": [{"method": "icl", "quantize": "4bit", "template": "sentiment"}], "output_dir": str(tmp_path / "o"),
    }))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    out = run_cli("run", str(cfg))  # preflight checks every method before anything loads
    assert out.returncode == 2
    assert "quantize: 4bit needs bitsandbytes" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_4bit_and_8bit_on_cuda(tiny_lm_dir):
    _check_quantised(tiny_lm_dir, "4bit", "Linear4bit", torch.device("cuda"))
    _check_quantised(tiny_lm_dir, "8bit", "Linear8bitLt", torch.device("cuda"))

