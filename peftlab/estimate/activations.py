"""What autograd keeps for the backward pass, counted per layer and per token (no model needed).

``peftlab plan`` needs the activation memory of one training step before any weights load. A
fixed "values per token per layer" undercounts: what is stored depends on *which* tensors need a
gradient. An op saves an input only when a gradient has to flow through it or into a weight next to
it, so a frozen layer below the first trainable thing stores nothing, a frozen linear with a
trainable input stores only its (already counted) weight, and LoRA stores each adapted layer's
input (a second, dropped-out copy of it plus the dropout mask when lora dropout > 0).

:func:`saved_bytes` walks a BERT-like encoder (BERT, RoBERTa, XLM-R: post-LayerNorm blocks) one
layer at a time, following whether each tensor requires grad, and adds what each op saves. The
counts follow torch 2.x on CPU: scaled-dot-product attention with dropout runs the "math" path,
which keeps the T x T probabilities three times (softmax output, dropout mask, dropped
probabilities); without attention dropout the fused flash kernel keeps only q, k, v, the output,
a log-sum-exp per row and a float copy of the padding mask. CPU dropout keeps a float mask
(``mask_bytes`` 4); CUDA's fused dropout a byte mask (1). tests/test_activations.py checks the
count against the bytes that ``torch.autograd.graph.saved_tensors_hooks`` sees on tiny models,
method by method.

A method says how gradients flow through it with a :class:`Flow`, which its own ``flow`` builds
(every registered method declares one: :mod:`peftlab.methods`). :mod:`peftlab.estimate.activations_decoder`
walks Llama-style decoders the same way; :mod:`peftlab.estimate.activation_flows` picks the walk per family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftlab.estimate.params import ArchSpec, matches_target

#: activation functions whose backward needs the result (1 saved tensor shared with the next linear)
#: rather than the input (2: the input, and the output kept by the next linear)
SAVES_RESULT = {"relu", "tanh", "sigmoid"}
#: the block-relative names of the linears of a BERT-like layer
QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
ATTN_OUT, FFN_IN, FFN_OUT = "attention.output.dense", "intermediate.dense", "output.dense"
#: the block-relative names of its two LayerNorms (after attention, after the feed-forward)
ATTN_NORM, FFN_NORM = "attention.output.LayerNorm", "output.LayerNorm"


@dataclass(frozen=True)
class Flow:
    """Where a method puts trainable tensors, i.e. where gradients start flowing.

    Per-layer fields hold block-relative linear names (``attention.self.query``).
    """

    #: blocks whose own weights all train (full: every block; partial: the top k)
    trained_blocks: frozenset[int] = frozenset()
    #: the word/position embeddings (and their LayerNorm) train
    embeddings: bool = False
    #: the post part between the last block and the head (Llama's final norm) trains
    post: bool = False
    #: LoRA: adapted linear -> its lora dropout probability (same in every block)
    lora: dict[str, float] = field(default_factory=dict)
    #: LoRA rank (the A output of width r is kept for B's gradient)
    lora_r: int = 0
    #: DoRA: adapted linear -> its d_out. Beyond LoRA's, it keeps per token its
    #: frozen output and its LoRA output (both d_out wide, for the magnitude's gradient), and once
    #: the detached weight norm and the magnitude / norm scale
    dora: dict[str, int] = field(default_factory=dict)
    #: (IA)^3: scaled linear -> True when its input is scaled (feed-forward), False for its output
    ia3: dict[str, bool] = field(default_factory=dict)
    #: a side branch through *frozen* weights with trained parts of its own (VeRA's scaling
    #: vectors): linear -> values per token the branch keeps for their gradients. The linear's
    #: input is not kept (the branch's weights are frozen); its output needs a gradient.
    branch: dict[str, int] = field(default_factory=dict)
    #: a full-size weight delta built each step from trained factors (LoHa, LoKr): linear -> the
    #: delta's values (d_in x d_out). The linear's input is kept for the delta's gradient, and the
    #: delta itself (once per step, not per token) when a gradient flows on into the input.
    delta: dict[str, int] = field(default_factory=dict)
    #: what building a linear's weight from trained tensors keeps once per step whatever flows into
    #: the input (HRA's chain of reflections and its frozen factor): linear -> values
    built: dict[str, int] = field(default_factory=dict)
    #: block norms whose own weights train, block-relative names (LN tuning): a trained norm's
    #: output needs a gradient even where its input does not, and an RMSNorm then keeps its
    #: normalised input for the weight's gradient (a LayerNorm keeps its input either way)
    norms: frozenset[str] = frozenset()
    #: bottleneck adapters: linear whose output they follow -> (bottleneck width, nonlinearity)
    adapters: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: prompt / p-tuning: trainable tokens prepended to the input (the sequence grows)
    prompt_tokens: int = 0
    #: p-tuning's prompt encoder: values it keeps per virtual token (MLP inputs and activations)
    prompt_encoder_values: int = 0
    #: prefix tuning: trainable key/value positions prepended in every block's attention
    prefix_tokens: int = 0
    #: prefix tuning's projection (embedding -> Linear -> Tanh -> Linear), run for every example:
    #: values it keeps per virtual token and example
    prefix_encoder_values: int = 0


def full_flow(spec: ArchSpec) -> Flow:
    """Everything trains: every block, the embeddings and the post part."""
    return Flow(trained_blocks=frozenset(range(spec.num_layers)), embeddings=True, post=True)


def block_linears(spec: ArchSpec, targets: list[str]) -> list[str]:
    """Block-relative names of the linears ``targets`` match (peft's rule, checked on block 0)."""
    first = f"{spec.layers_prefix}.0."
    return [n for n in spec.layer_linears if any(matches_target(first + n, t) for t in targets)]



@dataclass(frozen=True)
class Dims:
    """The sizes the count needs: one step's batch and length, and the encoder's widths."""

    batch: int
    length: int
    hidden: int
    inter: int
    heads: int
    layers: int
    #: dropout probabilities of the backbone (0 switches dropout off, so nothing is kept for it)
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float = 0.1
    #: bytes of a dropout mask: 4 on CPU (a float mask), 1 on CUDA (fused dropout, a bool mask)
    mask_bytes: int = 4
    value_bytes: int = 4
    labels: int = 2
    #: decoders: width of all query heads together (heads x head_dim), and of the key (= value)
    #: projection (grouped key/value heads x head_dim)
    q_width: int = 0
    kv_width: int = 0


def dims_of(spec: ArchSpec, conf: Any, batch: int, length: int, mask_bytes: int = 4) -> Dims:
    h = spec.hidden
    cls_p = getattr(conf, "classifier_dropout", None)
    hid_p = float(getattr(conf, "hidden_dropout_prob", 0.1) or 0.0)
    return Dims(batch=batch, length=length, hidden=h,
                inter=int(getattr(conf, "intermediate_size", 4 * h) or 4 * h),
                heads=int(getattr(conf, "num_attention_heads", 1) or 1), layers=spec.num_layers,
                hidden_dropout=hid_p,
                attention_dropout=float(getattr(conf, "attention_probs_dropout_prob", 0.1) or 0.0),
                classifier_dropout=hid_p if cls_p is None else float(cls_p), mask_bytes=mask_bytes,
                labels=spec.num_labels)


class _Tally:
    """Bytes kept for backward; each tensor is added once (a tensor saved by two ops is one buffer)."""

    def __init__(self, d: Dims) -> None:
        self.d, self.total = d, 0
        self.rotary = False  # decoders: some block's rotary embedding needs its cos/sin tables

    def values(self, n: int, kept: bool = True) -> None:
        self.total += n * self.d.value_bytes if kept else 0

    def mask(self, n: int, p: float, kept: bool = True) -> None:
        """A dropout keeps its mask when a gradient flows through it (its output is a new tensor)."""
        self.total += n * self.d.mask_bytes if kept and p > 0 else 0


def _linear_in(t: _Tally, f: Flow, name: str, n_in: int, x_kept: bool, x_grad: bool, block_trains: bool,
               r_tokens: int) -> tuple[bool, bool]:
    """What one linear keeps of its input ``x`` (``n_in`` values). Returns (x now kept, output needs grad).

    A weight that trains needs ``x``; a frozen weight needs nothing of it. A LoRA branch needs
    its A's input (``x`` itself, or with dropout a dropped copy plus the mask) and A's output
    (r values per token) for B. An (IA)^3 input scale needs ``x`` for the scale's gradient. A
    frozen side branch keeps what its method says per token (:attr:`Flow.branch`); a weight delta
    (:attr:`Flow.delta`) needs ``x``, and is itself kept when a gradient flows into ``x``.
    """
    keep_x = block_trains or (name in f.lora and f.lora[name] == 0) or f.ia3.get(name, False) or name in f.delta
    t.values(f.delta.get(name, 0), x_grad)
    t.values(f.built.get(name, 0))
    if name in f.lora:
        p = f.lora[name]
        if p > 0:
            t.values(n_in)  # the dropped-out copy, kept by lora_A
            t.mask(n_in, p, x_grad)  # the mask only when a gradient flows back into x
        t.values(r_tokens * f.lora_r)  # lora_A's output, kept by lora_B
        t.values(2 * (r_tokens + 1) * f.dora.get(name, 0))  # DoRA: two outputs per token, two scales
    t.values(r_tokens * f.branch.get(name, 0))
    if keep_x and not x_kept:
        t.values(n_in)
    adapted = name in f.lora or name in f.ia3 or name in f.branch or name in f.delta
    return x_kept or keep_x, x_grad or block_trains or adapted


def _linear_out(t: _Tally, f: Flow, name: str, n_out: int, y_grad: bool) -> tuple[bool, bool]:
    """After a linear: an (IA)^3 output scale keeps the unscaled output; a bottleneck adapter keeps
    its input (the linear's output) and its hidden activation. Returns (output kept, output needs grad)."""
    kept = False
    if name in f.ia3 and not f.ia3[name]:
        t.values(n_out)
        kept = True
    if name in f.adapters:
        b, act = f.adapters[name]
        tokens = n_out // t.d.hidden
        if not kept:
            t.values(n_out)  # adapter.down keeps its input
        t.values(tokens * b * (1 if act in SAVES_RESULT else 2))
        y_grad = True
    return kept, y_grad


def _layer_norm(t: _Tally, n: int, tokens: int, grad: bool) -> None:
    """LayerNorm keeps its input plus a mean and a 1/std per token (when a gradient passes or it trains)."""
    if grad:
        t.values(n + 2 * tokens)


def _attention(t: _Tally, d: Dims, f: Flow, tokens: int, q_grad: bool, k_grad: bool, v_grad: bool
               ) -> tuple[bool, bool]:
    """Scaled dot-product attention over ``tokens`` queries and ``tokens + prefix`` keys.

    q, k and v reach the kernel as new tensors (scaled, or copied when heads are folded into the
    batch), so nothing here is shared with a linear's kept input. Returns (the context needs a
    gradient, the context is already kept).
    """
    keys = tokens + f.prefix_tokens * d.batch
    n_q, n_k = tokens * d.hidden, keys * d.hidden
    if not (q_grad or k_grad or v_grad):
        return False, False
    if d.attention_dropout > 0:  # math path: q*s @ (k*s)^T -> softmax -> dropout -> @ v
        probs = d.heads * tokens * (keys // d.batch)
        scores_grad = q_grad or k_grad
        t.values(n_q, k_grad)  # the scaled query, for k's gradient
        t.values(n_k, q_grad)  # the scaled key, for q's gradient
        t.values(probs, scores_grad)  # softmax output
        t.mask(probs, d.attention_dropout, scores_grad)
        t.values(probs, v_grad)  # dropped probabilities, for v's gradient
        t.values(n_k, scores_grad)  # v, for the probabilities' gradient
        return True, False
    # fused flash kernel: q, k, v, the output (whose storage the context reuses), a log-sum-exp per
    # head and query, and its own float copy of the padding mask
    t.values(2 * n_q + 2 * n_k + d.heads * tokens + tokens * (keys // d.batch))
    return True, True


def _residual_norm(t: _Tally, d: Dims, tokens: int, branch_grad: bool, res_grad: bool, trains: bool) -> bool:
    """dropout(branch) + residual -> LayerNorm; returns whether the LayerNorm's output needs a gradient."""
    n = tokens * d.hidden
    t.mask(n, d.hidden_dropout, branch_grad)
    grad = branch_grad or res_grad or trains
    _layer_norm(t, n, tokens, grad)
    return grad


def _block(t: _Tally, d: Dims, f: Flow, i: int, tokens: int, x_grad: bool) -> bool:
    """One post-LayerNorm encoder block; returns whether its output needs a gradient."""
    n, wide, trains = tokens * d.hidden, tokens * d.inter, i in f.trained_blocks
    grads, x_kept = [], False
    for name in QKV:  # q, k, v all read the block input x: it is kept at most once
        x_kept, g = _linear_in(t, f, name, n, x_kept, x_grad, trains, tokens)
        _, g = _linear_out(t, f, name, n, g)
        grads.append(g or (f.prefix_tokens > 0 and name != QKV[0]))
    ctx_grad, ctx_kept = _attention(t, d, f, tokens, *grads)
    # context -> attention.output.dense -> dropout -> + x -> LayerNorm
    _, g = _linear_in(t, f, ATTN_OUT, n, ctx_kept, ctx_grad, trains, tokens)
    _, g = _linear_out(t, f, ATTN_OUT, n, g)
    y_grad = _residual_norm(t, d, tokens, g, x_grad, trains or ATTN_NORM in f.norms)
    # y -> intermediate.dense -> GELU -> output.dense -> dropout -> + y -> LayerNorm
    _, g = _linear_in(t, f, FFN_IN, n, False, y_grad, trains, tokens)
    _, g = _linear_out(t, f, FFN_IN, wide, g)
    t.values(wide, g)  # GELU keeps its input
    _, g = _linear_in(t, f, FFN_OUT, wide, False, g, trains, tokens)
    _, g = _linear_out(t, f, FFN_OUT, n, g)
    return _residual_norm(t, d, tokens, g, y_grad, trains or FFN_NORM in f.norms)


def saved_bytes(f: Flow, d: Dims, pooler: bool = True) -> int:
    """Bytes autograd keeps for backward in one training step of a BERT-like classifier.

    Per block and token, when everything trains: the inputs of the six linears (four of width h,
    the FFN's second one of width i: q, k, v share one), the GELU input (i), two dropout masks and
    two LayerNorm inputs (h each, plus 2 statistics), and in attention a scaled query, scaled key
    and value (h each) plus softmax output, dropout mask and dropped probabilities (``heads x keys``
    each). Terms vanish where no gradient flows (see the module docstring); adapters, LoRA, (IA)^3
    and prompts add theirs. ``pooler``: BERT's pooler (dense + tanh, trained as part of the head)
    sits before the classifier.
    """
    t = _Tally(d)
    tokens = d.batch * (d.length + f.prompt_tokens)
    n = tokens * d.hidden
    t.values(f.prompt_tokens * f.prompt_encoder_values)  # peft encodes one copy, then repeats it
    t.values(d.batch * f.prefix_tokens * f.prefix_encoder_values)
    if f.embeddings:  # the lookups keep their indices (int64) for the weights' gradients
        t.total += 8 * (2 * tokens + d.length)
    g = f.embeddings or f.prompt_tokens > 0
    _layer_norm(t, n, tokens, g)  # embeddings: sum -> LayerNorm -> dropout
    t.mask(n, d.hidden_dropout, g)
    for i in range(d.layers):
        g = _block(t, d, f, i, tokens, g)
    _head(t, d, f, tokens, g, pooler)
    return t.total


def _head(t: _Tally, d: Dims, f: Flow, tokens: int, g: bool, pooler: bool) -> None:
    """After the last block: pooler (on the first token), dropout, classifier, loss.

    The pooler is part of the head and always trains: it keeps its input, a view of the first
    token that pins the whole last hidden state (``tokens x hidden``).
    """
    b, h = d.batch, d.hidden
    if pooler:
        t.values(tokens * h)
        g = True
        t.values(b * h, g)  # tanh keeps its output
    else:  # RoBERTa's head: dropout -> dense (trained) -> tanh -> dropout -> out_proj
        t.mask(b * h, d.classifier_dropout, g)
        t.values(2 * b * h)
        g = True
    t.mask(b * h, d.classifier_dropout, g)
    t.values(b * h)  # the classifier's input
    t.values(b * d.labels)  # log-softmax output of the loss
    t.total += 8 * b  # the labels (int64)


def backward_working_bytes(f: Flow, d: Dims) -> int:
    """Gradient buffers alive at once on top of the kept tensors, at the backward's peak.

    The backward of one math-path attention holds the gradients of the dropped probabilities, of
    the probabilities and of the scores together (3 tensors of ``heads x tokens x keys``); a
    feed-forward backward holds two of width i (the GELU's output and input gradients). Measured on
    MiniLM-L6 with freed memory returned at once (a fixed glibc mmap threshold): peak minus
    weights, optimizer and kept tensors = 34-37 MB, 3 x 12.6 MB here.
    """
    tokens = d.batch * (d.length + f.prompt_tokens)
    keys = d.length + f.prompt_tokens + f.prefix_tokens
    attention = 3 * d.heads * tokens * keys if d.attention_dropout > 0 else 0
    return d.value_bytes * max(attention, 2 * tokens * d.inter)
