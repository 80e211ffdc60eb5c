"""Closed-form parameter counts derived from an architecture's config, never from the model.

Every result stores the counted number (from the live model) next to the number derived here,
so a method that trains more or less than it claims is caught. Each method's own formula is its
``derived_trainable`` (in its module under ``peftlab/methods/``); here are the pure functions of an
:class:`ArchSpec` those formulas share (a layer's, the post part's, the targeted linears'). Supporting
a new family means one ``_spec_*`` builder in ``FAMILIES``.

Naming: a *layer* is one transformer block; the *post* part is what sits between the last block
and the classification head (Llama's final norm); the *head* is every module between the last
block's output and the logits that every method trains: the module the sequence-classification
class adds (``classifier``, ``score``, T5's ``classification_head``) and, for BERT, the pooler
before it (see ``_spec_bert``). An encoder-decoder (T5) has two *stacks* of blocks: the spec's own
fields describe the first (the encoder), ``extra_stacks`` the others (:class:`Stack`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from peftlab.infra.registry import Registry


@dataclass(frozen=True)
class Stack:
    """One run of identical blocks beyond the spec's first (an encoder-decoder's decoder).

    Why a second stack rather than one list of blocks: T5's decoder blocks have a cross-attention
    the encoder blocks lack, so one ``layer_linears`` cannot describe both; every closed form that
    walks blocks (all linears, all norms, the total, partial's top blocks) walks each stack.
    """

    prefix: str
    num_layers: int
    layer_linears: dict[str, tuple[int, int, bool]]
    layer_other: int
    layer_norms: dict[str, int] = field(default_factory=dict)
    #: parameters only the stack's first block holds (T5's relative attention bias)
    first_block_other: int = 0


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
    #: parameters only the first block holds (T5's relative attention bias; 0 elsewhere)
    first_block_other: int = 0
    #: the stacks after the first (T5's decoder); () for encoders and decoder-only models
    extra_stacks: tuple[Stack, ...] = ()


def stacks(spec: ArchSpec) -> tuple[Stack, ...]:
    """Every stack of blocks, the spec's own first (the encoder of an encoder-decoder)."""
    first = Stack(prefix=spec.layers_prefix, num_layers=spec.num_layers, layer_linears=spec.layer_linears,
                  layer_other=spec.layer_other, layer_norms=spec.layer_norms, first_block_other=spec.first_block_other)
    return (first, *spec.extra_stacks)


def num_blocks(spec: ArchSpec) -> int:
    """Blocks in all stacks (T5-small: 6 + 6)."""
    return sum(s.num_layers for s in stacks(spec))


def stack_params(stack: Stack) -> int:
    return stack.num_layers * layer_params(stack) + stack.first_block_other


def top_blocks_params(stack: Stack, k: int) -> int:
    """The top ``k`` blocks of a stack (its first block's extras when ``k`` reaches it)."""
    return min(k, stack.num_layers) * layer_params(stack) + (stack.first_block_other if k >= stack.num_layers else 0)


def linear_params(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def layer_params(spec: ArchSpec | Stack) -> int:
    """One block of ``spec``'s first stack (or of ``stack``)."""
    return sum(linear_params(*s) for s in spec.layer_linears.values()) + spec.layer_other


def post_params(spec: ArchSpec) -> int:
    return spec.post_other


def probe_params(spec: ArchSpec) -> int:
    """What the linear probe trains: the last head module alone."""
    return spec.probe_head or spec.head


def total_params(spec: ArchSpec) -> int:
    """All parameters of the plain sequence-classification model."""
    return spec.embeddings + sum(stack_params(s) for s in stacks(spec)) + post_params(spec) + spec.head



def all_linears(spec: ArchSpec) -> dict[str, tuple[int, int, bool]]:
    """Every linear of the backbone by full dotted name (the head excluded: peft never adapts a
    ``modules_to_save`` module, and bitsandbytes skips the head)."""
    return {
        f"{s.prefix}.{i}.{name}": shape
        for s in stacks(spec)
        for i in range(s.num_layers)
        for name, shape in s.layer_linears.items()
    }


def matches_target(module_name: str, target: str) -> bool:
    """peft's rule for a string entry of ``target_modules``: exact name or a ``.``-suffix."""
    return module_name == target or module_name.endswith("." + target)


def all_norms(spec: ArchSpec) -> dict[str, int]:
    """Every norm module of the backbone by full dotted name -> its parameters (the head has none)."""
    inner = {f"{s.prefix}.{i}.{name}": n
             for s in stacks(spec) for i in range(s.num_layers) for name, n in s.layer_norms.items()}
    return {**spec.outer_norms, **inner}


def targeted_linears(spec: ArchSpec, targets: list[str]) -> dict[str, tuple[int, int, bool]]:
    return {
        name: shape
        for name, shape in all_linears(spec).items()
        if any(matches_target(name, t) for t in targets)
    }







def prefix_layers(spec: ArchSpec) -> int:
    """Blocks whose attention reads prefix tuning's key/values: the last stack's (an encoder-decoder's
    decoder self-attentions: transformers' T5 encoder stack takes no cache)."""
    return stacks(spec)[-1].num_layers


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


def _t5_attention(prefix: str, d: int, inner: int) -> dict[str, tuple[int, int, bool]]:
    return {f"{prefix}.{n}": (d, inner, False) for n in ("q", "k", "v")} | {f"{prefix}.o": (inner, d, False)}


def _t5_ffn(prefix: str, d: int, d_ff: int, gated: bool) -> dict[str, tuple[int, int, bool]]:
    """T5's FFN: ``wi`` then ``wo``; T5 v1.1 / flan-T5 / mT5 (``gated-gelu``) gate it: ``wi_0``, ``wi_1``."""
    wi = {f"{prefix}.wi_0": (d, d_ff, False), f"{prefix}.wi_1": (d, d_ff, False)} if gated else {
        f"{prefix}.wi": (d, d_ff, False)}
    return wi | {f"{prefix}.wo": (d_ff, d, False)}


@FAMILIES.register("t5")
def _spec_t5(c: Any) -> ArchSpec:
    """T5ForSequenceClassification: ``transformer`` (a T5Model: encoder and decoder stacks) and
    ``classification_head`` (dense + tanh + out_proj on the decoder's state at the last EOS).

    What the closed forms must know: one token embedding (``shared``) tied to both stacks' input
    embeddings (and, in T5ForConditionalGeneration, to the LM head), so counted once; no biases in
    the blocks; T5's norms are RMS norms (a weight, no bias); each stack's first block alone holds
    the relative attention bias (buckets x heads), which the other blocks reuse; attention width is
    heads x d_kv, not necessarily d_model; the decoder blocks add a cross-attention and a third norm.
    """
    d, d_ff, heads = c.d_model, c.d_ff, c.num_heads
    inner, gated = heads * c.d_kv, bool(c.is_gated_act)
    rel = c.relative_attention_num_buckets * heads
    enc_norms = {"layer.0.layer_norm": d, "layer.1.layer_norm": d}
    dec_norms = enc_norms | {"layer.2.layer_norm": d}
    decoder = Stack(
        prefix="transformer.decoder.block",
        num_layers=c.num_decoder_layers,
        layer_linears=(_t5_attention("layer.0.SelfAttention", d, inner) | _t5_attention("layer.1.EncDecAttention", d, inner)
                       | _t5_ffn("layer.2.DenseReluDense", d, d_ff, gated)),
        layer_other=3 * d,
        layer_norms=dec_norms,
        first_block_other=rel,
    )
    final_norms = {"transformer.encoder.final_layer_norm": d, "transformer.decoder.final_layer_norm": d}
    return ArchSpec(
        family=c.model_type,  # "mt5" too: peft's per-architecture defaults are looked up by it
        num_layers=c.num_layers,
        hidden=d,
        num_labels=c.num_labels,
        layer_linears=_t5_attention("layer.0.SelfAttention", d, inner) | _t5_ffn("layer.1.DenseReluDense", d, d_ff, gated),
        layer_other=2 * d,
        layer_norms=enc_norms,
        first_block_other=rel,
        extra_stacks=(decoder,),
        embeddings=c.vocab_size * d,
        post_other=2 * d,
        post_modules=tuple(final_norms),
        outer_norms=final_norms,
        head=linear_params(d, d, True) + linear_params(d, c.num_labels, True),
        head_modules=("classification_head",),
        layers_prefix="transformer.encoder.block",
        kv_dim=inner,
    )


FAMILIES.add("mt5", _spec_t5)

#: set (to "text") on a loaded encoder-decoder's config when its rows use ``head: text``
#: (peftlab.backbones.text_head): every ``arch_spec(model.config)`` (runner, plan, predict) then
#: describes the seq2seq LM the method adapts, with no head, without the head threaded through each call
HEAD_ATTR = "peftlab_head"


def text_head_spec(spec: ArchSpec) -> ArchSpec:
    """The spec of ``T5ForConditionalGeneration`` for ``head: text``: the same blocks under the LM's
    own names (``encoder.block``, not ``transformer.encoder.block``) and no classification head: the
    label's verbalizer is scored by the LM head, which adds nothing to count. transformers 5 ties
    T5's LM head to the shared embedding always (T5Config forces ``tie_word_embeddings``; a
    flan-T5 / T5 v1.1 config's ``false`` now only turns off the decoder-output scaling), so the
    head is the embedding, counted once, and trains only where the embedding does (``full``)."""
    strip = "transformer."
    return replace(
        spec,
        layers_prefix=spec.layers_prefix.removeprefix(strip),
        extra_stacks=tuple(replace(s, prefix=s.prefix.removeprefix(strip)) for s in spec.extra_stacks),
        post_modules=tuple(m.removeprefix(strip) for m in spec.post_modules),
        outer_norms={k.removeprefix(strip): v for k, v in spec.outer_norms.items()},
        head=0, head_modules=(), probe_head=0,
    )


def is_text_head(spec: ArchSpec | None) -> bool:
    """Whether ``spec`` is an encoder-decoder under ``head: text`` (:func:`text_head_spec`)."""
    return spec is not None and bool(spec.extra_stacks) and not spec.head_modules


def arch_spec(config: Any) -> ArchSpec | None:
    """The spec for a transformers config, or None when no closed form is known for its family."""
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        return None
    spec = FAMILIES.get(family)(config)
    return text_head_spec(spec) if getattr(config, HEAD_ATTR, None) == "text" else spec


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
