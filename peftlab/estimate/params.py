"""Closed-form parameter counts derived from an architecture's config, never from the model.

Every result stores the counted number (from the live model) next to the number derived here,
so a method that trains more or less than it claims is caught. Each method's own formula is its
``derived_trainable`` (in its module under ``peftlab/methods/``); here are the pure functions of an
:class:`ArchSpec` those formulas share (a layer's, the post part's, the targeted linears'). Supporting
a new family means one ``_spec_*`` builder in ``FAMILIES``.

Naming: a *layer* is one transformer block; the *post* part is what sits between the last block
and the classification head (Llama's final norm); the *head* is every module between the last
block's output and the logits that every method trains: the module the sequence-classification
class adds (``classifier`` or ``score``) and, for BERT, the pooler before it (see ``_spec_bert``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from peftlab.infra.registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    family: str
    num_layers: int
    hidden: int
    num_labels: int
    #: per-layer linear modules: name relative to the layer -> (d_in, d_out, has_bias)
    layer_linears: dict[str, tuple[int, int, bool]]
    #: per-layer parameters that are not in ``layer_linears`` (norms)
    layer_other: int
    embeddings: int
    #: parameters of the post part (Llama's final norm)
    post_other: int = 0
    head: int = 0
    #: dotted names of the head modules (trained by every method, saved by peft's modules_to_save),
    #: in forward order; the linear probe trains only the last one
    head_modules: tuple[str, ...] = ("classifier",)
    #: parameters of the last head module (what the linear probe trains); 0 means all of ``head``
    probe_head: int = 0
    #: modules between the last block and the head (trained by ``partial``)
    post_modules: tuple[str, ...] = ()
    #: prefix of the transformer blocks: f"{layers_prefix}.{i}.{linear}"
    layers_prefix: str = ""
    is_decoder: bool = False
    #: width of one layer's key (= value) projection; 0 means ``hidden`` (no grouped-query attention).
    #: Prefix tuning stores one key and one value vector of this width per layer and virtual token.
    kv_dim: int = 0
    #: per-layer norm modules: name relative to the layer -> parameters (what ``layer_other`` sums)
    layer_norms: dict[str, int] = field(default_factory=dict)
    #: norm modules outside the blocks, by full dotted name -> parameters (BERT's embedding
    #: LayerNorm, Llama's final norm): LN tuning's closed form names every norm it may target
    outer_norms: dict[str, int] = field(default_factory=dict)


def linear_params(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def layer_params(spec: ArchSpec) -> int:
    return sum(linear_params(*s) for s in spec.layer_linears.values()) + spec.layer_other


def post_params(spec: ArchSpec) -> int:
    return spec.post_other


def probe_params(spec: ArchSpec) -> int:
    """What the linear probe trains: the last head module alone."""
    return spec.probe_head or spec.head


def total_params(spec: ArchSpec) -> int:
    """All parameters of the plain sequence-classification model."""
    return spec.embeddings + spec.num_layers * layer_params(spec) + post_params(spec) + spec.head



def all_linears(spec: ArchSpec) -> dict[str, tuple[int, int, bool]]:
    """Every linear of the backbone by full dotted name (the head excluded: peft never adapts a
    ``modules_to_save`` module, and bitsandbytes skips the head)."""
    return {
        f"{spec.layers_prefix}.{i}.{name}": shape
        for i in range(spec.num_layers)
        for name, shape in spec.layer_linears.items()
    }


def matches_target(module_name: str, target: str) -> bool:
    """peft's rule for a string entry of ``target_modules``: exact name or a ``.``-suffix."""
    return module_name == target or module_name.endswith("." + target)


def all_norms(spec: ArchSpec) -> dict[str, int]:
    """Every norm module of the backbone by full dotted name -> its parameters (the head has none)."""
    inner = {f"{spec.layers_prefix}.{i}.{name}": n
             for i in range(spec.num_layers) for name, n in spec.layer_norms.items()}
    return {**spec.outer_norms, **inner}


def targeted_linears(spec: ArchSpec, targets: list[str]) -> dict[str, tuple[int, int, bool]]:
    return {
        name: shape
        for name, shape in all_linears(spec).items()
        if any(matches_target(name, t) for t in targets)
    }







def prefix_token_dim(spec: ArchSpec) -> int:
    """Width of a prefix key/value vector: peft uses kv_heads * head_dim for grouped-query attention."""
    return spec.kv_dim or spec.hidden



FAMILIES: Registry[Callable[[Any], ArchSpec]] = Registry("architecture family")


@FAMILIES.register("bert")
def _spec_bert(c: Any) -> ArchSpec:
    """BertForSequenceClassification classifies ``pooler(hidden[:, 0])``: the pooler (dense + tanh)
    is part of the head, and every method trains it, as RoBERTa's dense + out_proj head is trained.

    Why: a frozen pre-trained pooler is not a neutral feature map. all-MiniLM-L6-v2 was trained
    with mean pooling, and its unused pooler weights are near zero (std 0.009): with the pooler
    frozen, Houlsby, Pfeiffer, P-tuning and prefix tuning all predicted the majority class on the
    drug reviews, and trained once the pooler trained (BENCHMARKS.md "All methods").
    """
    h, i = c.hidden_size, c.intermediate_size
    return ArchSpec(
        family="bert",
        num_layers=c.num_hidden_layers,
        hidden=h,
        num_labels=c.num_labels,
        layer_linears={
            "attention.self.query": (h, h, True),
            "attention.self.key": (h, h, True),
            "attention.self.value": (h, h, True),
            "attention.output.dense": (h, h, True),
            "intermediate.dense": (h, i, True),
            "output.dense": (i, h, True),
        },
        layer_other=2 * 2 * h,  # two LayerNorms (weight + bias)
        layer_norms={"attention.output.LayerNorm": 2 * h, "output.LayerNorm": 2 * h},
        outer_norms={"bert.embeddings.LayerNorm": 2 * h},
        embeddings=(c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h,
        head=linear_params(h, h, True) + linear_params(h, c.num_labels, True),
        head_modules=("bert.pooler.dense", "classifier"),
        probe_head=linear_params(h, c.num_labels, True),
        layers_prefix="bert.encoder.layer",
    )


def _spec_roberta_like(c: Any, family: str, prefix: str) -> ArchSpec:
    """BERT's layers and embeddings; RobertaForSequenceClassification has no pooler, and its head
    is one module, dense + out_proj (the linear probe trains both)."""
    h = c.hidden_size
    return replace(
        _spec_bert(c),
        family=family,
        head=linear_params(h, h, True) + linear_params(h, c.num_labels, True),
        head_modules=("classifier",),
        probe_head=0,
        layers_prefix=f"{prefix}.encoder.layer",
        outer_norms={f"{prefix}.embeddings.LayerNorm": 2 * h},
    )


FAMILIES.add("roberta", lambda c: _spec_roberta_like(c, "roberta", "roberta"))
FAMILIES.add("xlm-roberta", lambda c: _spec_roberta_like(c, "xlm-roberta", "roberta"))


@FAMILIES.register("llama")
def _spec_llama(c: Any) -> ArchSpec:
    h, i = c.hidden_size, c.intermediate_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or h // heads
    ab = bool(getattr(c, "attention_bias", False))
    mb = bool(getattr(c, "mlp_bias", False))
    return ArchSpec(
        family="llama",
        num_layers=c.num_hidden_layers,
        hidden=h,
        num_labels=c.num_labels,
        layer_linears={
            "self_attn.q_proj": (h, heads * hd, ab),
            "self_attn.k_proj": (h, kv * hd, ab),
            "self_attn.v_proj": (h, kv * hd, ab),
            "self_attn.o_proj": (heads * hd, h, ab),
            "mlp.gate_proj": (h, i, mb),
            "mlp.up_proj": (h, i, mb),
            "mlp.down_proj": (i, h, mb),
        },
        layer_other=2 * h,  # two RMSNorm weights
        layer_norms={"input_layernorm": h, "post_attention_layernorm": h},
        outer_norms={"model.norm": h},
        embeddings=c.vocab_size * h,
        post_other=h,  # final RMSNorm
        post_modules=("model.norm",),
        head=linear_params(h, c.num_labels, False),
        head_modules=("score",),
        layers_prefix="model.layers",
        is_decoder=True,
        kv_dim=kv * hd,
    )


FAMILIES.add("mistral", _spec_llama)


def arch_spec(config: Any) -> ArchSpec | None:
    """The spec for a transformers config, or None when no closed form is known for its family."""
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        return None
    return FAMILIES.get(family)(config)


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) counted on the live model; shared tensors counted once.

    4-bit packed weights (bitsandbytes ``Params4bit``) store two values per byte; their logical
    size comes from ``quant_state.shape`` so the trainable share is never inflated.
    """
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = logical_numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def logical_numel(p: Any) -> int:
    qs = getattr(p, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        n = 1
        for d in qs.shape:
            n *= int(d)
        return n
    return int(p.numel())


def base_weight_bytes(model: Any) -> int:
    """Bytes the model's weights occupy as stored, quantisation statistics included.

    Call it on the loaded base model (before a method adds its parameters) to compare what the
    frozen base costs in memory: fp32 = 4 bytes per weight, 8-bit ~1, 4-bit NF4 ~0.5 plus the
    per-block absmax (and, with double quantisation, its own second-level statistics). Shared
    tensors are counted once.
    """
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if t is None or not hasattr(t, "element_size") or id(t) in seen:
            return
        seen.add(id(t))
        total += int(t.numel()) * int(t.element_size())

    for p in model.parameters():
        if id(p) in seen:
            continue
        add(p)
        qs = getattr(p, "quant_state", None)  # bitsandbytes Params4bit
        if qs is not None:
            add(getattr(qs, "absmax", None))
            add(getattr(qs, "code", None))
            state2 = getattr(qs, "state2", None)
            if state2 is not None:
                add(getattr(state2, "absmax", None))
                add(getattr(state2, "code", None))
        add(getattr(p, "SCB", None))  # bitsandbytes Int8Params: per-row scales
    return total
