"""Composition (issue 6): identities, exact weight-space sums, merge == unmerged, refusals,
the expression parser and the (IA)^3 rules, on adapters of a tiny random BERT.

Adapters are built with peft and given random non-zero factors (peft starts LoRA B at zero,
which would make every identity pass trivially)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification

from peftlab.compose.adapter import head_tensors, load_adapter
from peftlab.compose.core import compose, parse_adapter_args, write
from peftlab.compose.expr import linear_form, variables_of
from peftlab.compose.model import load_with_adapter, merge_to
from peftlab.compose.ops import add, analogy, negate, scale, zeros_like
from peftlab.infra.errors import PeftlabError
from peftlab.methods.lora import lora_delta, lora_modules, lora_scaling
from method_table import _one_thread  # noqa: F401  (autouse: one intra-op thread)


def make(tiny_bert: str, out: Path, kind: str = "lora", seed: int = 0, **kw) -> Path:
    """Save a peft adapter of ``kind`` on the tiny BERT with random trained-looking weights."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    if kind == "lora":
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=kw.get("r", 4), lora_alpha=kw.get("alpha", 8),
                         target_modules=kw.get("targets"), modules_to_save=["classifier"])
    else:
        cfg = IA3Config(task_type=TaskType.SEQ_CLS, modules_to_save=["classifier"])
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_bert: str, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make(tiny_bert, root / "a", seed=1),
        "b": make(tiny_bert, root / "b", seed=2),
        "c": make(tiny_bert, root / "c", seed=3),
        "r2": make(tiny_bert, root / "r2", seed=4, r=2, alpha=6),
        "q_only": make(tiny_bert, root / "q_only", seed=5, targets=["query"]),
        "ia": make(tiny_bert, root / "ia", kind="ia3", seed=6),
        "ib": make(tiny_bert, root / "ib", kind="ia3", seed=7),
    }


def pool(adapters: dict[str, Path], *names: str) -> dict:
    return {n: load_adapter(n, adapters[n]) for n in names}


def same(x: dict, y: dict, keys=None, atol: float = 0.0) -> bool:
    keys = keys or x.keys()
    return set(x) == set(y) and all(torch.allclose(x[k], y[k], atol=atol, rtol=0) for k in keys)


BATCH = {"input_ids": torch.tensor([[2, 5, 9, 12, 3, 0], [2, 7, 8, 3, 0, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**BATCH).logits


def base_logits(tiny_bert: str) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    return logits(model)


# ---- identities --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,mode", [("a", "parameter"), ("a", "weight"), ("ia", "parameter")])
def test_plus_zero_is_identity(adapters, name, mode):
    p = pool(adapters, name)
    a = p[name]
    out, _ = compose(f"{name} + 0", p, mode=mode)
    if mode == "parameter":
        assert same(out.tensors, a.tensors)
        assert same(add(a, zeros_like(a)).tensors, a.tensors)
    else:  # exact concatenation: a rescaled factorisation of the same update
        for prefix in lora_modules(a):
            assert torch.allclose(lora_delta(out, prefix), lora_delta(a, prefix), atol=1e-6)


@pytest.mark.parametrize("name,mode", [("a", "parameter"), ("a", "weight"), ("ia", "parameter")])
def test_a_minus_a_is_base(adapters, tiny_bert, tmp_path, name, mode):
    out, rec = compose(f"{name} - {name}", pool(adapters, name), mode=mode, head="first")
    write(out, rec, tmp_path / "ad")
    model, _ = load_with_adapter(tmp_path / "ad", out)
    # the head is kept (not a base weight), so compare the encoder: the pooled features
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        got = model.base_model.model.bert(**BATCH).pooler_output
        want = base.bert(**BATCH).pooler_output
    assert torch.allclose(got, want, atol=1e-6)
    if name == "ia":
        assert all(torch.equal(v, torch.ones_like(v)) for k, v in out.tensors.items() if k.endswith("ia3_l"))


def test_negate_twice_is_identity_and_flips_only_b(adapters):
    p = pool(adapters, "a", "ia")
    a, ia = p["a"], p["ia"]
    assert same(negate(negate(a)).tensors, a.tensors)
    assert same(negate(negate(ia)).tensors, ia.tensors, atol=1e-7)
    neg = negate(a)
    for prefix, (fa, fb) in lora_modules(a).items():
        na, nb = lora_modules(neg)[prefix]
        assert torch.equal(na, fa) and torch.equal(nb, -fb)  # -B, never both factors
    assert same(head_tensors(neg), head_tensors(a))


def test_ia3_rules(adapters):
    p = pool(adapters, "ia", "ib")
    ia, ib = p["ia"], p["ib"]
    keys = [k for k in ia.tensors if k.endswith("ia3_l")]
    neg = negate(ia)
    avg, _ = compose("0.5*ia + 0.5*ib", p)
    summed, _ = compose("ia + ib", p)
    weight, _ = compose("ia + ib", p, mode="weight")
    for k in keys:
        assert torch.allclose(neg.tensors[k], 2 - ia.tensors[k])  # not -l
        assert torch.allclose(avg.tensors[k], 0.5 * ia.tensors[k] + 0.5 * ib.tensors[k], atol=1e-6)
        assert torch.allclose(summed.tensors[k], ia.tensors[k] + ib.tensors[k] - 1, atol=1e-6)  # deltas add
        assert torch.equal(weight.tensors[k], summed.tensors[k])  # exact in weight space already
    with pytest.raises(PeftlabError, match="LoRA only"):
        compose("ia + ib", p, mode="weight", rank=2)


def test_lora_parameter_space_combines_factors(adapters):
    p = pool(adapters, "a", "b")
    out, _ = compose("0.25*a - 0.75*b", p)
    for prefix, (aa, ab) in lora_modules(p["a"]).items():
        ba, bb = lora_modules(p["b"])[prefix]
        oa, ob = lora_modules(out)[prefix]
        assert torch.allclose(oa, 0.25 * aa + 0.75 * ba, atol=1e-7)
        assert torch.allclose(ob, 0.25 * ab - 0.75 * bb, atol=1e-7)
    assert scale(p["a"], 1.0).tensors.keys() == p["a"].tensors.keys()


@pytest.mark.parametrize("rank", [None, 6])
def test_weight_space_sum_equals_sum_of_deltas(adapters, tiny_bert, tmp_path, rank):
    p = pool(adapters, "a", "r2")  # ranks 4 and 2, alphas 8 and 6: only weight mode can mix them
    out, rec = compose("0.7*a - 1.3*r2", p, mode="weight", rank=rank)
    assert out.config["r"] == 6 and lora_scaling(out) == 1.0
    for prefix in lora_modules(out):
        want = 0.7 * lora_delta(p["a"], prefix) - 1.3 * lora_delta(p["r2"], prefix)
        assert torch.allclose(lora_delta(out, prefix), want, atol=1e-5)
    # and peft reads our config the same way: merged weight - base weight = the sum of deltas
    write(out, rec, tmp_path / "ad")
    merge_to(tmp_path / "ad", out, tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged"))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    prefix = next(iter(lora_modules(out)))
    mod = prefix.removeprefix("base_model.model.")
    got = merged.get_submodule(mod).weight.double() - base.get_submodule(mod).weight.double()
    want = 0.7 * lora_delta(p["a"], prefix) - 1.3 * lora_delta(p["r2"], prefix)
    assert torch.allclose(got, want, atol=1e-5)


def test_svd_truncation_is_best_low_rank(adapters):
    p = pool(adapters, "a", "b")
    out, _ = compose("a + b", p, mode="weight", rank=2)
    prefix = next(iter(lora_modules(out)))
    full = lora_delta(p["a"], prefix) + lora_delta(p["b"], prefix)
    s = torch.linalg.svdvals(full)
    err = torch.linalg.matrix_norm(lora_delta(out, prefix) - full)
    assert torch.isclose(err, s[2:].square().sum().sqrt(), atol=1e-5)  # Eckart-Young
    assert lora_modules(out)[prefix][0].shape[0] == 2


@pytest.mark.parametrize("text,names,mode,rank", [
    ("a + (b - c)", ("a", "b", "c"), "parameter", None),
    ("a + (b - c)", ("a", "b", "c"), "weight", 3),
    ("ia - 0.5*ib", ("ia", "ib"), "parameter", None),
])
def test_merged_equals_unmerged_and_differs_from_base(adapters, tiny_bert, tmp_path, text, names, mode, rank):
    p = pool(adapters, *names)
    out, rec = compose(text, p, mode=mode, rank=rank, head="first")
    write(out, rec, tmp_path / "ad")
    unmerged, _ = load_with_adapter(tmp_path / "ad", out)
    merge_to(tmp_path / "ad", out, tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    got, want = logits(merged), logits(unmerged)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, base_logits(tiny_bert), atol=1e-3)
    if "c" in p:
        assert same(head_tensors(out), head_tensors(analogy(p["a"], p["b"], p["c"])))


# ---- heads -------------------------------------------------------------------------------------

def test_head_policies(adapters):
    p = pool(adapters, "a", "b")
    ha, hb = head_tensors(p["a"]), head_tensors(p["b"])
    avg, _ = compose("0.25*a + 0.75*b", p)
    for k in ha:
        assert torch.allclose(avg.tensors[k], 0.25 * ha[k] + 0.75 * hb[k], atol=1e-7)
    neg, _ = compose("a - 0.5*b", p)  # only a has a positive coefficient: its head
    assert same(head_tensors(neg), ha)
    assert same(head_tensors(compose("a + b", p, head="first")[0]), ha)
    assert same(head_tensors(compose("a + b", p, head="b")[0]), hb)
    with pytest.raises(PeftlabError, match="positive coefficient"):
        compose("-a", p)
    with pytest.raises(PeftlabError, match="--head 'zz'"):
        compose("a + b", p, head="zz")


# ---- refusals ----------------------------------------------------------------------------------

def test_refusals(adapters, tmp_path):
    cases = [
        ("a + ia", ("a", "ia"), "parameter", "different methods"),
        ("a + q_only", ("a", "q_only"), "parameter", "different target modules"),
        ("a + r2", ("a", "r2"), "parameter", "equal rank and alpha"),
    ]
    for text, names, mode, msg in cases:
        with pytest.raises(PeftlabError, match=msg) as err:
            compose(text, pool(adapters, *names), mode=mode)
        assert "\n" not in str(err.value)
    other = tmp_path / "other"
    shutil.copytree(adapters["b"], other)
    conf = json.loads((other / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = "someone/else"
    (other / "adapter_config.json").write_text(json.dumps(conf))
    p = {"a": load_adapter("a", adapters["a"]), "o": load_adapter("o", other)}
    with pytest.raises(PeftlabError, match="different base models"):
        compose("a + o", p)
    for key, value, msg in (("use_dora", True, "DoRA"), ("bias", "all", "bias='all'"),
                            ("rank_pattern", {"query": 2}, "rank_pattern")):
        (other / "adapter_config.json").write_text(json.dumps({**conf, "base_model_name_or_path": p["a"].config["base_model_name_or_path"], key: value}))
        with pytest.raises(PeftlabError, match=re.escape(msg)):
            compose("a + o", {"a": p["a"], "o": load_adapter("o", other)})
    conf["peft_type"] = "PROMPT_TUNING"
    (other / "adapter_config.json").write_text(json.dumps(conf))
    with pytest.raises(PeftlabError, match="supports lora and ia3"):
        load_adapter("o", other)
    with pytest.raises(PeftlabError, match="no adapter_config.json"):
        load_adapter("x", tmp_path)


# ---- the expression parser ---------------------------------------------------------------------

def test_parser_precedence_parentheses_unary():
    names = ["a", "b", "c", "pos", "neg", "base", "toxic"]
    assert linear_form("a + 2*b - c/2", names) == {"a": 1.0, "b": 2.0, "c": -0.5}
    assert linear_form("2*(a - b)", names) == {"a": 2.0, "b": -2.0}
    assert linear_form("-a - -b + +c", names) == {"a": -1.0, "b": 1.0, "c": 1.0}
    assert linear_form("0.5*pos + 0.5*neg", names) == {"pos": 0.5, "neg": 0.5}
    assert linear_form("base - 0.8*toxic", names) == {"base": 1.0, "toxic": -0.8}
    assert linear_form("a + (b - c)", names) == {"a": 1.0, "b": 1.0, "c": -1.0}
    assert linear_form("(1 - lambda)*a + lambda*b", names, {"lambda": 0.25}) == {"a": 0.75, "b": 0.25}
    assert linear_form("a - a", names) == {"a": 0.0}
    assert variables_of("a - lambda*b", names) == ["lambda"]


@pytest.mark.parametrize("text,msg", [
    ("a +", "at the end"), ("(a - b", "expected ')'"), ("a $ b", "unexpected character '$'"),
    ("a * b", "cannot multiply two adapters"), ("a / b", "divide by an adapter"), ("a b", "unexpected"),
    ("a + 1", "adds the number 1"), ("a / 0", "division by zero"), ("zz", "neither an adapter"), ("  ", "empty"),
    ("import os", "unexpected"), ("a.__class__", "unexpected character '.'"),
])
def test_parser_errors_are_one_line(text, msg):
    with pytest.raises(PeftlabError, match=re.escape(msg)) as err:
        linear_form(text, ["a", "b"])
    assert "\n" not in str(err.value)


def test_adapter_args():
    assert parse_adapter_args(["a=x/y", "b=z"]) == {"a": "x/y", "b": "z"}
    for bad in (["a"], ["1a=x"], ["a=x", "a=y"], ["a="]):
        with pytest.raises(PeftlabError):
            parse_adapter_args(bad)
