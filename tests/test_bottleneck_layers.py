"""Tests for peftlab.methods.bottleneck_layers on tiny random HF models (no downloads)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    LlamaConfig,
    RobertaConfig,
)

from peftlab.methods.bottleneck_layers import (
    AdapterWrappedLinear,
    BottleneckAdapter,
    BottleneckConfig,
    adapter_parameters,
    adapter_sites,
    adapter_state_dict,
    add_bottleneck_adapters,
    count_sites,
    expected_adapter_params,
    load_adapter_state_dict,
    load_adapters,
    save_adapters,
)

HIDDEN, LAYERS, VOCAB = 32, 2, 100
_BERTISH = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
                vocab_size=VOCAB, max_position_embeddings=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
CONFIGS = {
    "bert": lambda: BertConfig(**_BERTISH),
    "roberta": lambda: RobertaConfig(**_BERTISH, pad_token_id=1),
    "llama": lambda: LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=64, vocab_size=VOCAB,
                                 max_position_embeddings=64, pad_token_id=0),
    "distilbert": lambda: DistilBertConfig(dim=HIDDEN, n_layers=LAYERS, n_heads=4, hidden_dim=64, vocab_size=VOCAB,
                                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                           seq_classif_dropout=0.0),
}
ARCHS = list(CONFIGS)
KINDS = ["houlsby", "pfeiffer"]


def make_model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(CONFIGS[arch]())
    return model.eval()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (4, 8), generator=g)  # avoid pad ids 0/1
    return ids, torch.tensor([0, 1, 0, 1])


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---------------------------------------------------------------- config

def test_config_defaults_and_sizes():
    c = BottleneckConfig("houlsby")
    assert c.reduction_factor == 16 and c.bottleneck_size is None and c.size_for(768) == 48
    assert BottleneckConfig("pfeiffer", reduction_factor=64).size_for(32) == 1  # floor at 1
    assert BottleneckConfig("pfeiffer", bottleneck_size=7).size_for(32) == 7
    assert BottleneckConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("d", [
    {"kind": "lora"},
    {"kind": "houlsby", "bottleneck_size": 4, "reduction_factor": 2},
    {"kind": "houlsby", "bottleneck_size": 0},
    {"kind": "houlsby", "bottleneck_size": True},
    {"kind": "houlsby", "reduction_factor": -1},
    {"kind": "houlsby", "nonlinearity": "swish"},
    {"kind": "houlsby", "nonlinearity": ["relu"]},
    {"kind": "houlsby", "extra": 1},
    {"bottleneck_size": 4},
])
def test_config_rejects_bad(d):
    with pytest.raises(ValueError):
        BottleneckConfig.from_dict(d)


def test_adapter_module_is_identity_at_init():
    a = BottleneckAdapter(8, 2, "gelu")
    x = torch.randn(3, 8)
    assert torch.equal(a(x), x)
    assert sum(p.numel() for p in a.parameters()) == expected_adapter_params([8], BottleneckConfig("houlsby", bottleneck_size=2))


def test_count_sites_and_bad_kind():
    assert count_sites(12, "houlsby") == 24 and count_sites(12, "pfeiffer") == 12
    with pytest.raises(ValueError):
        count_sites(2, "prefix")


def test_no_sites_raises():
    with pytest.raises(ValueError, match="no recognised"):
        adapter_sites(nn.Sequential(nn.Linear(4, 4)), "houlsby")


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_sites_identity_perturb_and_count(arch, kind):
    model = make_model(arch)
    ids, _ = batch()
    base_out = logits(model, ids)
    sites = adapter_sites(model, kind)
    assert len(sites) == count_sites(LAYERS, kind)  # (1)
    if kind == "pfeiffer":
        assert not any("attention" in s or "attn" in s for s in sites)
    cfg = BottleneckConfig(kind, reduction_factor=8, nonlinearity="gelu")
    assert add_bottleneck_adapters(model, cfg) == sites
    for s in sites:
        assert isinstance(model.get_submodule(s), AdapterWrappedLinear)
    assert all(p.requires_grad for p in model.parameters())  # caller freezes, not us
    assert torch.equal(logits(model, ids), base_out)  # (2) zero-init up-projection
    n = sum(p.numel() for _, p in adapter_parameters(model))
    assert n == expected_adapter_params([HIDDEN] * count_sites(LAYERS, kind), cfg)  # (4)
    assert all(".adapter." in name for name, _ in adapter_parameters(model))
    perturb(model)
    assert not torch.allclose(logits(model, ids), base_out)  # (3)
    with pytest.raises(ValueError, match="already"):
        add_bottleneck_adapters(model, cfg)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["bert", "roberta", "llama"])
def test_training_updates_only_adapters(arch, kind):
    model = make_model(arch)
    add_bottleneck_adapters(model, BottleneckConfig(kind, bottleneck_size=8))
    adapter_names = {n for n, _ in adapter_parameters(model)}
    for n, p in model.named_parameters():
        p.requires_grad_(n in adapter_names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for _, p in adapter_parameters(model)], lr=1e-2)
    ids, labels = batch()
    model.train()
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if n in adapter_names:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["bert", "roberta", "llama", "distilbert"])
def test_save_load_roundtrip(arch, kind, tmp_path):
    model = make_model(arch)
    cfg = BottleneckConfig(kind, bottleneck_size=4, nonlinearity="silu")
    add_bottleneck_adapters(model, cfg)
    perturb(model)
    ids, _ = batch()
    expected = logits(model, ids)
    save_adapters(model, cfg, tmp_path / "ad")
    meta = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert meta["peftlab_method"] == kind and meta["sites"] == adapter_sites(make_model(arch), kind)
    sd = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert set(sd) == set(adapter_state_dict(model))

    fresh = make_model(arch)
    assert load_adapters(fresh, tmp_path / "ad") == cfg
    assert torch.equal(logits(fresh, ids), expected)  # (6)


# ---------------------------------------------------------------- load errors (7)

@pytest.fixture
def saved(tmp_path):
    model = make_model("bert")
    cfg = BottleneckConfig("houlsby", bottleneck_size=4)
    add_bottleneck_adapters(model, cfg)
    perturb(model)
    save_adapters(model, cfg, tmp_path)
    return tmp_path


def _assert_unadapted(model):
    assert not adapter_parameters(model)


def test_load_missing_files(saved, tmp_path):
    model = make_model("bert")
    with pytest.raises(ValueError, match="missing"):
        load_adapters(model, tmp_path / "nope")
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="missing"):
        load_adapters(model, saved)
    _assert_unadapted(model)


def test_load_wrong_shape_rolls_back(saved):
    path = saved / "adapter_model.safetensors"
    sd = load_file(str(path))
    key = next(k for k in sd if k.endswith("down.weight"))
    sd[key] = torch.zeros(5, HIDDEN)
    save_file(sd, str(path))
    model = make_model("bert")
    with pytest.raises(ValueError, match="shape_mismatch"):
        load_adapters(model, saved)
    _assert_unadapted(model)  # rolled back, model is usable and re-loadable


@pytest.mark.parametrize("text", [
    "{not json",
    "[1, 2]",
    json.dumps({"peftlab_method": "houlsby", "kind": "houlsby", "bottleneck_size": 4, "sites": [], "bogus": 1}),
    json.dumps({"peftlab_method": "pfeiffer", "kind": "houlsby", "bottleneck_size": 4, "sites": []}),
    json.dumps({"peftlab_method": "houlsby", "kind": "houlsby", "bottleneck_size": 4, "sites": "x"}),
    json.dumps({"peftlab_method": "houlsby", "kind": "houlsby", "bottleneck_size": 4, "sites": ["a.b"]}),
])
def test_load_bad_config(saved, text):
    (saved / "adapter_config.json").write_text(text)
    model = make_model("bert")
    with pytest.raises(ValueError):
        load_adapters(model, saved)
    _assert_unadapted(model)


def test_load_corrupt_safetensors(saved):
    (saved / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load_adapters(make_model("bert"), saved)


def test_load_state_dict_strict():
    model = make_model("llama")
    add_bottleneck_adapters(model, BottleneckConfig("pfeiffer", bottleneck_size=2))
    sd = adapter_state_dict(model)
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in sd.values())
    missing = dict(sd)
    missing.pop(next(iter(sd)))
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state_dict(model, missing)
    with pytest.raises(ValueError, match="unexpected"):
        load_adapter_state_dict(model, {**sd, "foo.adapter.bar": torch.zeros(1)})
    sd2 = {k: v + 1 for k, v in sd.items()}
    load_adapter_state_dict(model, sd2)
    assert all(torch.equal(a, sd2[k]) for k, a in adapter_state_dict(model).items())


def test_adapter_follows_base_dtype():
    model = make_model("bert").to(torch.float64)
    add_bottleneck_adapters(model, BottleneckConfig("pfeiffer"))
    assert all(p.dtype == torch.float64 for _, p in adapter_parameters(model))
