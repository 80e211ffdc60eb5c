"""The CPU dropout sampler (peftlab.backbones.dropout): the mask's distribution and scale, that it is
the same dropout as torch's in everything but the random stream (eval mode, gradient, weights,
outputs), the swap reaching peft's dropouts, the choice (environment, probe, GPU) and its cache, and
a run recording which sampler trained. Nothing here asserts on a timing: the probe is mocked, or only
checked to return figures."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from peftlab.backbones import dropout as D
from peftlab.backbones.dropout import (CACHE_FILE, ENV, MIN_SPEEDUP, BitsDropout, DropoutProbe, apply,
                                       cached_probe, choose, drop, drop_threshold, keep_mask, measure, swap_dropouts)
from peftlab.config import validate_raw
from peftlab.infra.errors import PeftlabError


def test_threshold_drops_exactly_p_of_the_32_bit_values():
    assert drop_threshold(0.0) == -(2 ** 31)  # every int32 reaches it: nothing dropped
    assert drop_threshold(0.5) == 0
    assert drop_threshold(1.0) == 2 ** 31  # no int32 reaches it: everything dropped
    assert abs((drop_threshold(0.1) + 2 ** 31) / 2 ** 32 - 0.1) <= 2 ** -33


@pytest.mark.parametrize("p", [0.1, 0.5, 0.999, (25 * 2 ** 24 + 2 ** 23) / 2 ** 32, 2 ** -8])
def test_dropout_keeps_one_minus_p_scaled_by_its_inverse(p):
    """p = 0.5 and 2**-8: thresholds on a byte boundary (a tie keeps); the fourth: half of the
    ties kept, on 24 further bits."""
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of 8: the last int64 draw is used in part
    noise = drop(torch.ones(n), p)
    assert noise.shape == (n,) and noise.dtype == torch.float32
    assert noise.unique().tolist() == pytest.approx([0.0, 1.0 / (1.0 - p)])
    kept = (noise != 0).double().mean().item()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sd  # binomial: 5 standard deviations
    assert abs(noise.double().mean().item() - 1.0) < 5 * sd / (1 - p)  # E[noise] = 1, as dropout's
    halves = drop(torch.ones(2, 3000, dtype=torch.bfloat16), p)  # rows are not copies of each other
    assert halves.dtype == torch.bfloat16 and not torch.equal(halves[0], halves[1])


def test_byte_comparisons_eight_at_a_time_equal_uint8_comparisons():
    every_byte = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(torch.int64)  # 32 words
    words = torch.cat([every_byte, torch.randint(-2 ** 63, 2 ** 63 - 1, (64,), dtype=torch.int64)])
    b = words.view(torch.uint8)
    for c in range(1, 256):
        assert torch.equal(D._bytes_at_least(words.clone(), c).view(torch.uint8), b.ge(c).to(torch.uint8)), c
        assert torch.equal(D._bytes_equal(words.clone(), c).view(torch.uint8), b.eq(c).to(torch.uint8) * 128), c


@pytest.mark.parametrize("p", [0.1, (7 * 2 ** 24 + 12345) / 2 ** 32, 0.5])
def test_mask_is_the_32_bit_comparison_with_the_bits_drawn_lazily(p):
    """Rebuilt from the same generator: each element's first byte, and for a tie with the
    threshold's top byte the next 24-bit draw in position order, make 32 bits u; kept iff u >= t."""
    n, t = 20_011, round(p * 2 ** 32)
    got = keep_mask((n,), p, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(1 << 63), None, generator=g)
    first = words.view(torch.uint8)[:n].long()
    u = first << 24
    ties = (first == t >> 24).nonzero().squeeze(1)
    if t & 0xFFFFFF:
        u[ties] += torch.empty(len(ties), dtype=torch.int64).random_(0, 1 << 24, generator=g)
    else:
        u[ties] += 0xFFFFFF  # a tie with a threshold on a byte boundary is kept whatever follows
    assert len(ties) > 0 and torch.equal(got, u >= t)


def test_mask_follows_the_seed():
    torch.manual_seed(3)
    a = keep_mask((64, 7), 0.1)
    torch.manual_seed(3)
    assert torch.equal(a, keep_mask((64, 7), 0.1))
    assert not torch.equal(a, keep_mask((64, 7), 0.1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_keeps_a_mask_of_the_inputs_dtype(dtype):
    x = torch.randn(16, 32, dtype=dtype, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        drop(x, 0.1)
    assert [t.dtype for t in saved] == [dtype]  # as torch's CPU dropout, and the memory plan counts


def test_bits_dropout_is_dropout_in_all_but_the_stream():
    d = BitsDropout(0.25)
    assert isinstance(d, nn.Dropout) and d.p == 0.25
    x = torch.randn(8, 50, requires_grad=True)
    d.eval()
    assert torch.equal(d(x), x)  # eval: identity
    d.train()
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert 0 < kept.sum() < x.numel()
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)  # the gradient goes through the same mask
    assert torch.equal(BitsDropout(0.0).train()(x), x)
    assert torch.equal(BitsDropout(1.0).train()(x), torch.zeros_like(x))


def _lora_bert(tiny_bert: str, targets: tuple[str, ...] = ("query", "value")) -> nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=list(targets),
                                            task_type="SEQ_CLS"))


def test_swap_reaches_every_dropout_and_changes_no_weight_or_output(tiny_bert):
    model = _lora_bert(tiny_bert)
    before = [n for n, m in model.named_modules() if type(m) is nn.Dropout and m.p > 0]
    lora = [n for n in before if "lora_dropout" in n]
    assert lora and len(before) > len(lora)  # peft's and the backbone's own
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(5, 20, (3, 9))  # within the tiny vocabulary
    model.eval()
    out = model(input_ids=ids).logits
    assert swap_dropouts(model) == len(before)
    assert [n for n, m in model.named_modules() if isinstance(m, BitsDropout)] == before
    assert not [m for m in model.modules() if type(m) is nn.Dropout and m.p > 0]
    assert model.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(input_ids=ids).logits, out)  # eval mode: the same model
    model.train()
    torch.manual_seed(1)
    a = model(input_ids=ids).logits
    torch.manual_seed(1)
    assert torch.equal(model(input_ids=ids).logits, a) and not torch.equal(a, out)  # training: seeded masks


def test_choice_follows_environment_probe_and_device():
    fast, slow = (lambda: DropoutProbe(6.0, 2.5)), (lambda: DropoutProbe(1.2, 1.7))
    assert choose("cpu", {}, fast)[0] and "probe" in choose("cpu", {}, fast)[1]
    assert not choose("cpu", {}, slow)[0]
    assert not choose("cpu", {ENV: "probe"}, lambda: DropoutProbe(MIN_SPEEDUP * 0.99, 1.0))[0]
    assert choose("cpu", {ENV: "probe"}, lambda: DropoutProbe(MIN_SPEEDUP, 1.0))[0]

    def never():
        raise AssertionError("no probe needed")
    assert choose("cpu", {ENV: "bits"}, never) == (True, f"bits ({ENV})")
    assert choose("cpu", {ENV: "torch"}, never) == (False, f"torch ({ENV})")
    assert choose("cuda", {ENV: "bits"}, never) == (False, "torch (fused on cuda)")
    with pytest.raises(PeftlabError, match=ENV):
        choose("cpu", {ENV: "fast"}, never)
    assert apply(nn.Sequential(nn.Linear(2, 2)), "cpu", {ENV: "bits"}) is None  # nothing to swap: nothing said
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    assert apply(m, "cpu", {ENV: "bits"}) == f"bits ({ENV})" and isinstance(m[1], BitsDropout)


def test_probe_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    calls = []

    def run():
        calls.append(1)
        return DropoutProbe(6.0, 2.0)
    assert cached_probe(1, run) == DropoutProbe(6.0, 2.0)
    assert cached_probe(1, run) == DropoutProbe(6.0, 2.0) and len(calls) == 1
    cached_probe(2, run)
    assert len(calls) == 2  # another thread count: measured again
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())["entries"]) == 2
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert cached_probe(1, run) == DropoutProbe(6.0, 2.0) and len(calls) == 3  # unreadable: measured over
    got = measure(elements=4096, rounds=2)
    assert got.torch_ns > 0 and got.bits_ns > 0


def test_run_records_the_sampler_and_trains_with_it(tiny_bert, tmp_path, monkeypatch):
    from conftest import write_tiny_csvs
    from peftlab.runners.experiment import run_experiment

    monkeypatch.setenv(ENV, "bits")
    train, ev = write_tiny_csvs(tmp_path, 24, 12)
    raw = {"name": "drop", "backbone": tiny_bert, "task": {"source": "csv", "train_file": str(train), "eval_file": str(ev)},
           "methods": [{"method": "lora", "lr": 1e-3}, {"method": "full", "lr": 1e-4}], "output_dir": str(tmp_path / "run"),
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "num_threads": 1, "device": "cpu", "checkpoints": False}}
    rows = {r.name: r for r in run_experiment(validate_raw(raw), quiet=True)}
    for name in ("lora", "full"):
        # the tiny BERT drops attention probabilities: its SDPA moves to peftlab.backbones.attention too
        assert rows[name].status == "ok" and rows[name].environment["dropout"] == f"bits ({ENV}); attention: peftlab_cpu_sdpa"
        assert rows[name].epochs and all(math.isfinite(e.train_loss) for e in rows[name].epochs)


def test_lm_lora_training_swaps_too(tiny_bert, tmp_path, monkeypatch):
    from conftest import save_tiny_causal_lm
    from test_precision import icl_runner_rows

    monkeypatch.setenv(ENV, "bits")
    lm = save_tiny_causal_lm(tmp_path / "lm", seed=1)
    row = {"method": "lm_lora", "backbone": lm, "example": "{text} so it was", "instruction": "the drug", "lr": 1e-3,
           "dropout": 0.1, "verbalizers": {"positive": " good", "negative": " bad", "neutral": " meh"}}
    (r,) = icl_runner_rows(tmp_path / "a", tiny_bert, row, "no")
    assert r.status == "ok" and r.environment["dropout"] == f"bits ({ENV})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_dropout_is_the_fp32_dropout_cast_back(dtype):
    x = torch.randn(64, 384).to(dtype)
    d = BitsDropout(0.1).train()
    torch.manual_seed(4)
    lean = x.clone().requires_grad_()
    y = d(lean)
    torch.manual_seed(4)
    wide = x.clone().requires_grad_()
    ref = d(wide.float()).to(dtype)  # what peft's fp32 cast, the dropout and autocast's cast give
    assert y.dtype == dtype and torch.equal(y, ref) and 0 < (y == 0).sum() < y.numel()
    g = torch.randn(64, 384).to(dtype)
    y.backward(g)
    ref.backward(g)
    assert torch.equal(lean.grad, wide.grad)


def test_lean_lora_casts_compute_exactly_the_same(tiny_bert):
    from peft.tuners.lora.layer import Linear as LoraLinear

    from peftlab.backbones.dropout import lean_lora_casts, lean_lora_layers

    # "dense" includes the FFN's output layer, whose input (GELU of a bf16 product) is bf16 under autocast
    model = _lora_bert(tiny_bert, ("query", "value", "dense"))
    assert lean_lora_layers(model) == []  # torch's dropouts: peft's own path stays
    swap_dropouts(model)
    layers = lean_lora_layers(model)
    assert layers and len(layers) == len([m for m in model.modules() if isinstance(m, LoraLinear)])
    for m in layers:  # a trained adapter: lora_B is zero at initialisation
        nn.init.normal_(m.lora_B["default"].weight, std=0.1)
    ids = torch.randint(5, 20, (3, 9))
    model.train()

    def step(lean: bool):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        with lean_lora_casts(model, lean) as n, torch.autocast("cpu", dtype=torch.bfloat16):
            assert n == (len(layers) if lean else 0)
            assert all(m.cast_input_dtype_enabled is not lean for m in layers)
            logits = model(input_ids=ids).logits
        logits.float().square().sum().backward()
        return logits, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    (a, ga), (b, gb) = step(False), step(True)
    assert all(m.cast_input_dtype_enabled for m in layers)  # restored
    assert torch.equal(a, b) and ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    with lean_lora_casts(model, False) as n:
        assert n == 0
