"""peftlab.backbones.masks: no query row attends to nothing (decoders, left padding), with every
real position computing exactly what it did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from peftlab.backbones import attention as A
from peftlab.backbones import dropout as D
from peftlab.backbones import masks as M
from peftlab.backbones.cpu_train import cpu_training
from peftlab.backbones.loaders import load_classifier, load_tokenizer
from peftlab.config import BackboneConfig


def _left_padded_causal(batch: int = 2, n: int = 6, pads: int = 3) -> torch.Tensor:
    keep = torch.ones(batch, 1, n, n, dtype=torch.bool).tril()
    keep[0, :, :, :pads] = False  # row 0 left-padded: its first `pads` queries see no key
    return keep


def test_attend_somewhere_opens_only_rows_with_no_key():
    keep = _left_padded_causal()
    got = M.attend_somewhere(keep)
    empty = ~keep.any(-1)
    assert empty[0, 0, :3].all() and not empty[1].any()
    assert got[0, 0, :3].all()  # the pads' rows: every key
    assert torch.equal(got[~empty], keep[~empty])  # every other row as it was
    additive = torch.zeros(2, 1, 4, 4)
    additive[0, :, 1, :] = torch.finfo(torch.float32).min
    additive[1, :, 2, :] = float("-inf")
    additive[1, :, 3, :2] = torch.finfo(torch.float32).min
    opened = M.attend_somewhere(additive)
    assert (opened[0, 0, 1] == 0).all() and (opened[1, 0, 2] == 0).all()
    assert torch.equal(opened[1, 0, 3], additive[1, 0, 3])  # a row with keys left is untouched
    assert M.attend_somewhere(None) is None


@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernels_give_zeros_to_a_row_with_no_key(backend, dtype):
    """The docstring's claim about CPUs (why the fix matters only elsewhere): SDPA's CPU kernels
    return zeros, forward and backward, for a query row with nothing to attend to."""
    g = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(2, 2, 6, 8, generator=g).to(dtype).requires_grad_() for _ in range(3)]
    with sdpa_kernel([backend]):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_left_padded_causal())
    out.float().square().sum().backward()
    assert torch.isfinite(out).all() and (out[0, :, :3] == 0).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def _nan_on_empty_rows(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """A kernel that does what CUDA kernels were seen to do: NaN for a query row with no key (a
    plain softmax over -inf scores); everything else as SDPA's math."""
    if enable_gqa:
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scores = query @ key.transpose(-1, -2) * (query.shape[-1] ** -0.5 if scale is None else scale)
    n, m = scores.shape[-2:]
    if is_causal:
        attn_mask = torch.ones(n, m, dtype=torch.bool).tril()
    if attn_mask is not None:
        scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                  else scores + attn_mask)
    return torch.softmax(scores, dim=-1) @ value


def _tiny_llama(tiny_backbones):
    bb = BackboneConfig(name=tiny_backbones["llama"])
    tok = load_tokenizer(bb)
    torch.manual_seed(0)
    return load_classifier(bb, ["a", "b", "c"], tok), tok


def test_a_left_padded_decoder_stays_finite_where_a_kernel_gives_nan(tiny_backbones, monkeypatch):
    model, tok = _tiny_llama(tiny_backbones)
    assert tok.padding_side == "left" and model.config._attn_implementation == M.NAME
    model.eval()
    texts = ["good movie", "a truly bad and boring long movie"]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"][0] == 0).any()  # the short row has leading pads
    with torch.no_grad():
        alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", _nan_on_empty_rows)
        got = model(**batch).logits
        model.config._attn_implementation = M.BASE  # transformers' own masks: the kernel's NaN spreads
        plain = model(**batch).logits
    assert torch.isfinite(got).all()
    assert torch.allclose(got, alone, atol=1e-5)  # the padded batch computes each text as alone
    assert torch.isnan(plain[0]).all() and torch.isfinite(plain[1]).all()


def test_training_gradients_stay_finite_where_a_kernel_gives_nan(tiny_backbones, monkeypatch):
    model, tok = _tiny_llama(tiny_backbones)
    batch = tok(["good movie", "a truly bad and boring long movie"], padding=True, return_tensors="pt")
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", _nan_on_empty_rows)
    model.train()(**batch, labels=torch.tensor([0, 2])).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_only_decoders_and_only_sdpa_are_switched(tiny_backbones):
    bb = BackboneConfig(name=tiny_backbones["bert"])
    assert load_classifier(bb, ["a", "b", "c"], load_tokenizer(bb)).config._attn_implementation == "sdpa"
    from transformers import AutoModelForSequenceClassification

    eager = AutoModelForSequenceClassification.from_pretrained(tiny_backbones["llama"], attn_implementation="eager")
    assert M.use(eager) == 0 and eager.config._attn_implementation == "eager"


def test_saved_configs_name_plain_sdpa(tiny_backbones, tmp_path: Path):
    from transformers import AutoModelForSequenceClassification

    model, _ = _tiny_llama(tiny_backbones)
    model.save_pretrained(str(tmp_path))
    text = (tmp_path / "config.json").read_text()
    assert "peftlab" not in text and "_attn_implementation" not in json.loads(text)
    assert AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).config._attn_implementation == "sdpa"


def test_cpu_training_attention_sets_back_what_it_replaced(tiny_backbones, tiny_bert):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_backbones["llama"], attention_dropout=0.1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbones["llama"], config=config)
    M.use(model)
    assert A.switch(model) and model.config._attn_implementation == A.NAME
    A.restore(model)
    assert model.config._attn_implementation == M.NAME  # the decoder's masks again, not plain sdpa
    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert, attention_probs_dropout_prob=0.1)
    with cpu_training(bert, "cpu", False, {D.ENV: "bits"}):
        assert bert.config._attn_implementation == A.NAME
    assert bert.config._attn_implementation == "sdpa"
