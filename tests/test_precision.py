"""Mixed precision on CPU (peftlab.backbones.precision): the pure decision, the probe cache, the
environment override, and bf16 autocast really used where asked for (training, evaluation,
predict, in-context scoring). Nothing here asserts on a timing: the probe is mocked, or only
checked to return figures; the suite itself runs in fp32 (conftest sets PEFTLAB_CPU_PRECISION)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import DataCollatorWithPadding

from conftest import save_tiny_causal_lm, tiny_config
from peftlab.config import TrainConfig, validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.methods import METHODS
from peftlab.methods.icl import IclParams
from peftlab.runners.rows import BASELINE
from peftlab.backbones.precision import (BF16_MIN_SPEEDUP, CACHE_FILE, ENV, Precision, Probe, Shapes, cache_key,
                               cached_probe, measure, prefers_bf16, resolve, shapes_of)

FAST, SLOW = Probe(66.0, 186.0), Probe(150.0, 84.0)  # the AMD EPYC and Intel Xeon figures
SHAPES = Shapes(1280, 384, 1536)


def at(s: Shapes = SHAPES):
    return lambda: s


@pytest.mark.parametrize("probe, bf16", [(FAST, True), (SLOW, False), (Probe(100.0, 100.0 * BF16_MIN_SPEEDUP), True),
                                         (Probe(100.0, 129.0), False), (Probe(0.0, 10.0), False)])
def test_bf16_only_when_clearly_faster(probe, bf16):
    assert prefers_bf16(probe) is bf16


def test_cpu_auto_follows_the_probe():
    fast = resolve("auto", "cpu", at(), env={ENV: "probe"}, probe=lambda s: FAST)
    slow = resolve("auto", "cpu", at(), env={}, probe=lambda s: SLOW)
    assert (fast.dtype, slow.dtype) == ("bf16", "fp32")
    assert "fp32 66 GFLOP/s, bf16 186 GFLOP/s (2.82x >= 1.3x)" in fast.reason and "1280x384x1536" in fast.reason
    assert "fp32 150 GFLOP/s, bf16 84 GFLOP/s (0.56x < 1.3x)" in slow.reason
    assert fast.mixed_precision == "bf16" and slow.mixed_precision == "no"


def refuse(_s: Shapes) -> Probe:
    raise AssertionError("must not probe")


def test_environment_and_explicit_settings_need_no_probe():
    def shapes() -> Shapes:
        raise AssertionError("must not read the model's shapes")

    for env, want in (("fp32", "fp32"), ("bf16", "bf16"), ("BF16 ", "bf16")):
        got = resolve("auto", "cpu", shapes, env={ENV: env}, probe=refuse)
        assert (got.dtype, got.reason) == (want, f"{ENV}={want}")
    # an explicit setting beats the environment
    assert resolve("bf16", "cpu", shapes, env={ENV: "fp32"}, probe=refuse) == Precision("bf16", "asked for")
    assert resolve("no", "cpu", shapes, env={ENV: "bf16"}, probe=refuse) == Precision("fp32", "asked for")
    assert resolve("fp16", "cpu", shapes, env={}, probe=refuse).dtype == "fp32"  # accelerate ignores it on CPU
    assert resolve("auto", "cpu", None, env={}, probe=refuse).dtype == "fp32"  # nothing to probe at
    with pytest.raises(PeftlabError, match=f"{ENV}='fast'"):
        resolve("auto", "cpu", shapes, env={ENV: "fast"}, probe=refuse)


def test_cuda_and_methods_that_stay_fp32():
    assert resolve("auto", "cuda", None, env={ENV: "fp32"}, cuda_bf16=lambda: True) == Precision("bf16", "CUDA", "cuda")
    assert resolve("auto", "cuda", None, cuda_bf16=lambda: False).dtype == "fp16"
    assert resolve("no", "cuda", None).dtype == "fp32"
    # a method's own reason wins over every setting
    kept = resolve("bf16", "cpu", at(), keep_fp32="reason", probe=refuse)
    assert kept == Precision("fp32", "reason")
    qlora, probe_, lora = METHODS.get("qlora"), METHODS.get("linear_probe"), METHODS.get("lora")
    assert "bitsandbytes" in qlora.keeps_fp32(None, "cpu") and qlora.keeps_fp32(None, "cuda") is None
    assert probe_.keeps_fp32(None, "cpu") and probe_.keeps_fp32(None, "cuda")
    assert lora.keeps_fp32(None, "cpu") is None
    icl = METHODS.get("icl")
    assert icl.keeps_fp32(IclParams(quantize="4bit"), "cpu") and icl.keeps_fp32(IclParams(), "cpu") is None


def test_shapes_of_model_configs():
    assert shapes_of(tiny_config("bert"), 16 * 128) == Shapes(1024, 32, 64)  # capped
    assert shapes_of(tiny_config("llama"), 8) == Shapes(64, 32, 64)  # at least the floor
    assert shapes_of(type("C", (), {"n_embd": 48})(), 100) == Shapes(100, 48, 192)  # GPT-2 naming, 4x default


def test_probe_is_cached_per_machine_threads_and_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    calls: list[Shapes] = []

    def run(s: Shapes) -> Probe:
        calls.append(s)
        return FAST

    assert cached_probe(SHAPES, 1, run) == FAST
    assert cached_probe(SHAPES, 1, run) == Probe(66.0, 186.0) and len(calls) == 1  # the second comes from the file
    cached_probe(SHAPES, 2, run)
    cached_probe(Shapes(64, 32, 64), 1, run)
    assert len(calls) == 3
    stored = json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert set(stored) == {cache_key(SHAPES, 1), cache_key(SHAPES, 2), cache_key(Shapes(64, 32, 64), 1)}
    assert torch.__version__ in cache_key(SHAPES, 1)
    (tmp_path / CACHE_FILE).write_text("{not json")  # a damaged cache is measured over and rewritten
    assert cached_probe(SHAPES, 1, run) == FAST and len(calls) == 4
    assert cache_key(SHAPES, 1) in json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert not [p for p in tmp_path.iterdir() if p.name != CACHE_FILE]  # no temp file left


def test_measure_returns_both_figures():
    """Only that it measures both sides at these shapes (which side wins is the machine's business)."""
    got = measure(Shapes(64, 32, 64), rounds=1)
    assert math.isfinite(got.fp32_gflops) and got.fp32_gflops > 0 and got.bf16_gflops > 0


def _linear_dtypes(model: torch.nn.Module) -> tuple[list[torch.dtype], list]:
    seen: list[torch.dtype] = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
               for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return seen, handles


@pytest.mark.parametrize("mp, dtype", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_training_and_evaluation_autocast_as_resolved(tiny_bert, mp, dtype):
    """bf16 asked for on a CPU: the loop's forward passes (training and evaluation) run their
    matmuls in bf16, while weights, gradients, optimizer state and the loss stay fp32."""
    from transformers import AutoModelForSequenceClassification

    from peftlab.backbones.loaders import load_tokenizer
    from peftlab.config import BackboneConfig
    from peftlab.runners.batching import encode
    from peftlab.runners.train import fit, make_accelerator, train_precision
    from peftlab.tasks.base import Split
    from conftest import tiny_rows
    import numpy as np

    tcfg = TrainConfig(epochs=1, batch_size=4, device="cpu", mixed_precision=mp, checkpoints=False)
    prec = train_precision(tcfg)
    assert prec.dtype == ("bf16" if mp == "bf16" else "fp32") and prec.reason == "asked for"
    tok = load_tokenizer(BackboneConfig(name=tiny_bert))
    rows = tiny_rows(12)
    names = ["positive", "negative", "neutral"]
    feats = encode(tok, Split(texts=[t for t, _ in rows], labels=np.array([names.index(l) for _, l in rows])), 32)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    seen, handles = _linear_dtypes(model)
    losses: list[torch.dtype] = []
    orig = model.forward

    def forward(*a, **kw):
        out = orig(*a, **kw)
        if out.loss is not None:
            losses.append(out.loss.dtype)
        return out

    model.forward = forward
    model, outcome = fit(model, feats, feats, DataCollatorWithPadding(tok), 1e-3, tcfg, make_accelerator(tcfg, prec),
                         "t", True)
    for h in handles:
        h.remove()
    assert set(seen) == {dtype}  # training and evaluation passes alike
    assert losses and set(losses) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert outcome.logits is not None and outcome.logits.dtype == np.float32 and not outcome.nan_loss


def _cfg(tmp_path: Path, backbone: str, methods: list[dict], mp: str = "auto") -> dict:
    from conftest import write_tiny_csvs

    tmp_path.mkdir(parents=True, exist_ok=True)
    train, ev = write_tiny_csvs(tmp_path, 24, 12)
    return {"name": "prec", "backbone": backbone, "task": {"source": "csv", "train_file": str(train), "eval_file": str(ev)},
            "methods": methods, "output_dir": str(tmp_path / "run"),
            "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "num_threads": 1, "device": "cpu",
                      "mixed_precision": mp, "checkpoints": False}}


def test_rows_record_their_precision_and_predict_follows(tiny_bert, tmp_path, monkeypatch):
    from peftlab.runners.predict import load_predictor
    from peftlab.report.collect import collect
    from peftlab.report.facts import environment_table
    from peftlab.runners.experiment import run_experiment

    monkeypatch.setenv(ENV, "bf16")  # what `auto` would choose on a CPU where the probe says bf16
    raw = _cfg(tmp_path, tiny_bert, [{"method": "lora", "lr": 1e-3}, {"method": "linear_probe"}])
    res = {r.name: r for r in run_experiment(validate_raw(raw), quiet=True)}
    assert (res["lora"].precision, res["lora"].precision_reason) == ("bf16", f"{ENV}=bf16")
    assert res["linear_probe"].precision == "fp32" and "linear_probe" in res["linear_probe"].precision_reason
    assert [r.precision for r in res.values() if r.method == BASELINE] == [None]
    pred = load_predictor(tmp_path / "run" / "lora")
    assert pred.precision == Precision("bf16", f"{ENV}=bf16")
    seen, _ = _linear_dtypes(pred.model)
    assert pred.probabilities(["good drug"]).dtype == "float32" and set(seen) == {torch.bfloat16}
    assert load_predictor(tmp_path / "run" / "linear_probe").precision.dtype == "fp32"
    table = dict(environment_table(collect([tmp_path / "run"])))
    assert table["precision"] == (f"bf16 ({ENV}=bf16): lora; fp32 ({res['linear_probe'].precision_reason}): linear_probe")
    monkeypatch.setenv(ENV, "fp32")
    assert load_predictor(tmp_path / "run" / "lora").precision.dtype == "fp32"


def test_in_context_scoring_follows_the_setting(tmp_path, tiny_bert, monkeypatch):
    import peftlab.runners.icl as icl_runner

    lm = save_tiny_causal_lm(tmp_path / "lm", seed=1)
    seen: list[torch.dtype] = []
    real = icl_runner.PrefixScorer

    class Spy(real):
        def score(self, enc):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
            return super().score(enc)

    monkeypatch.setattr(icl_runner, "PrefixScorer", Spy)
    icl = {"method": "icl", "backbone": lm, "example": "{text} so it was", "instruction": "the drug",
           "verbalizers": {"positive": " good", "negative": " bad", "neutral": " meh"}}
    (r,) = [r for r in icl_runner_rows(tmp_path / "a", tiny_bert, icl, "bf16") if r.method == "icl"]
    assert r.status == "ok" and (r.precision, r.precision_reason) == ("bf16", "asked for") and seen == [torch.bfloat16]
    seen.clear()
    (r,) = [r for r in icl_runner_rows(tmp_path / "b", tiny_bert, icl, "no") if r.method == "icl"]
    assert r.precision == "fp32" and seen == [torch.float32]


def test_lm_lora_training_follows_the_setting(tmp_path, tiny_bert, monkeypatch):
    from peftlab.runners import lm_fit

    lm = save_tiny_causal_lm(tmp_path / "lm", seed=1)
    autocast: list[bool] = []
    real = lm_fit._batch
    monkeypatch.setattr(lm_fit, "_batch", lambda *a: autocast.append(torch.is_autocast_enabled("cpu")) or real(*a))
    row = {"method": "lm_lora", "backbone": lm, "example": "{text} so it was", "instruction": "the drug", "lr": 1e-3,
           "verbalizers": {"positive": " good", "negative": " bad", "neutral": " meh"}}
    (r,) = icl_runner_rows(tmp_path / "a", tiny_bert, row, "bf16")
    assert r.status == "ok" and r.precision == "bf16" and autocast and all(autocast)
    autocast.clear()
    (r,) = icl_runner_rows(tmp_path / "b", tiny_bert, row, "no")
    assert r.status == "ok" and autocast and not any(autocast)


def icl_runner_rows(tmp_path: Path, tiny_bert: str, method: dict, mp: str):
    from peftlab.runners.experiment import run_experiment

    raw = _cfg(tmp_path, tiny_bert, [method], mp)
    raw["baseline"] = False
    return run_experiment(validate_raw(raw), quiet=True)
