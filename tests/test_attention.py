"""peftlab.backbones.attention: SDPA's math with peftlab's CPU dropout, switched on and off with it
(peftlab.backbones.cpu_train)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from peftlab.backbones import attention as A
from peftlab.backbones import dropout as D
from peftlab.backbones.cpu_train import cpu_training


class _Layer(nn.Module):
    is_causal = False


def _qkv(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 5, 4, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def _math(q, k, v, mask, causal=False):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal).transpose(1, 2)


def _no_noise(monkeypatch):
    monkeypatch.setattr(D, "drop", lambda x, p, generator=None: x * 1.0)  # every element kept, unscaled


def _masks():
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    keep[0, :, :, 3:] = False  # padded keys
    keep[1, :, 2, :] = False  # a query row with no key at all: zeros, not NaN
    additive = torch.zeros(2, 1, 5, 5)
    additive[0, :, :, 4:] = torch.finfo(torch.float32).min
    return {"bool": keep, "float": additive, "none": None}


@pytest.mark.parametrize("kind", ["bool", "float", "none", "causal"])
def test_without_noise_it_is_sdpa_math(kind, monkeypatch):
    _no_noise(monkeypatch)
    layer = _Layer().train()
    layer.is_causal = kind == "causal"
    mask = _masks().get(kind)
    q, k, v = _qkv()
    out, weights = A.attention(layer, q, k, v, mask, dropout=0.1)
    ref = _math(q, k, v, mask, causal=kind == "causal")
    assert weights is None and out.shape == ref.shape and torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=1e-6)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, ref_grads))


def test_reduced_precision_is_computed_in_fp32_and_returned_in_its_dtype(monkeypatch):
    _no_noise(monkeypatch)
    q, k, v = _qkv(torch.bfloat16)
    out, _ = A.attention(_Layer().train(), q, k, v, _masks()["bool"], dropout=0.1)
    assert out.dtype == torch.bfloat16
    ref = _math(q.float(), k.float(), v.float(), _masks()["bool"]).to(torch.bfloat16)
    assert torch.equal(out, ref)  # SDPA's math path upcasts on a CPU: the same fp32 result, rounded once
    with torch.autocast("cpu", torch.bfloat16):  # as training calls it: autocast must not reach the products
        under, _ = A.attention(_Layer().train(), q, k, v, _masks()["bool"], dropout=0.1)
        with sdpa_kernel(SDPBackend.MATH):  # SDPA's math path under autocast: fp32 inside
            sdpa = F.scaled_dot_product_attention(q, k, v, _masks()["bool"])
    assert torch.equal(under, ref)
    assert (under.float() - sdpa.transpose(1, 2).float()).abs().max() <= 2 ** -7  # an ulp of bf16 at 1


def test_dropout_drops_probabilities_and_follows_the_seed():
    q, k, v = _qkv()
    layer = _Layer().train()
    plain = _math(q, k, v, None)
    torch.manual_seed(3)
    a, _ = A.attention(layer, q, k, v, None, dropout=0.5)
    torch.manual_seed(3)
    b, _ = A.attention(layer, q, k, v, None, dropout=0.5)
    assert torch.equal(a, b) and not torch.allclose(a, plain, atol=1e-3)
    a.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))
    many = torch.stack([A.attention(layer, q, k, v, None, dropout=0.5)[0] for _ in range(400)]).mean(0)
    assert torch.allclose(many, plain, atol=0.15)  # inverted dropout: unbiased in expectation


@pytest.mark.parametrize("case", ["eval", "p0", "weights"])
def test_everything_else_is_transformers_sdpa(case):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer = _Layer().train(case != "eval")
    q, k, v = _qkv()
    kw = {"output_attentions": True} if case == "weights" else {}
    p = 0.0 if case == "p0" else 0.1
    assert not A.handles(layer, q, p, kw)
    if case == "weights":
        return  # sdpa itself would drop with torch's sampler: nothing to compare exactly
    torch.manual_seed(5)  # handed on as is: sdpa then drops with torch's own sampler
    got, _ = A.attention(layer, q, k, v, _masks()["bool"], dropout=p, **kw)
    torch.manual_seed(5)
    want, _ = sdpa_attention_forward(layer, q, k, v, _masks()["bool"], dropout=p, **kw)
    assert torch.equal(got, want)


def _bert(tiny_bert: str, **cfg):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_bert, num_labels=3, **cfg)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, config=config)


def test_switched_with_the_dropout_sampler_and_restored(tiny_bert, monkeypatch):
    model = _bert(tiny_bert, attention_probs_dropout_prob=0.1)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(5, 20, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, 7:] = 0  # padding: the switched model must receive the same masks as sdpa
    ref = model.eval()(input_ids=ids, attention_mask=mask).logits
    with cpu_training(model, "cpu", False, {D.ENV: "bits"}) as why:
        assert why == f"bits ({D.ENV}); attention: {A.NAME}" and model.config._attn_implementation == A.NAME
        _no_noise(monkeypatch)
        got = model.train()(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(got, ref, atol=1e-5)  # training mode with every mask at one: the eval model
    assert model.config._attn_implementation == "sdpa"  # restored: no saved config names peftlab's function
    assert torch.equal(model.eval()(input_ids=ids, attention_mask=mask).logits, ref)


def test_not_switched_without_attention_dropout_or_without_the_sampler(tiny_bert):
    model = _bert(tiny_bert, attention_probs_dropout_prob=0.0)
    with cpu_training(model, "cpu", False, {D.ENV: "bits"}) as why:
        assert why == f"bits ({D.ENV})" and model.config._attn_implementation == "sdpa"
    model = _bert(tiny_bert, attention_probs_dropout_prob=0.1)
    with cpu_training(model, "cpu", False, {D.ENV: "torch"}) as why:
        assert why == f"torch ({D.ENV})" and model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), cpu_training(model, "cpu", False, {D.ENV: "bits"}):
        assert model.config._attn_implementation == A.NAME
        raise RuntimeError("a run that fails")
    assert model.config._attn_implementation == "sdpa"  # restored on failure too


def test_prefix_tuning_keys_longer_than_queries_match_sdpa(tiny_bert, monkeypatch):
    from peftlab.estimate.params import arch_spec
    from peftlab.methods.prefix_tuning import PrefixTuning, PrefixTuningParams

    base = _bert(tiny_bert, attention_probs_dropout_prob=0.1)
    model = PrefixTuning().prepare(base, PrefixTuningParams(num_virtual_tokens=4), arch_spec(base.config))
    ids = torch.randint(5, 20, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ref = model.eval()(input_ids=ids, attention_mask=mask).logits
    with cpu_training(model, "cpu", False, {D.ENV: "bits"}) as why:
        assert why.endswith(A.NAME)
        shapes = []
        monkeypatch.setattr(D, "drop", lambda x, p, generator=None: shapes.append(tuple(x.shape)) or x * 1.0)
        got = model.train()(input_ids=ids, attention_mask=mask).logits
    assert (3, 4, 9, 13) in shapes  # peftlab's attention ran: 9 queries over 4 prefix + 9 keys (4 heads)
    assert torch.allclose(got, ref, atol=1e-5)
