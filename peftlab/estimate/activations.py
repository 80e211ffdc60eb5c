"""What autograd keeps for the backward pass, counted per layer and per token (no model needed).

``peftlab plan`` needs the activation memory of one training step before any weights load. A
fixed "values per token per layer" undercounts: what is stored depends on *which* tensors need a
gradient. An op saves an input only when a gradient has to flow through it or into a weight next to
it, so a frozen layer below the first trainable thing stores nothing, a frozen linear with a
trainable input stores only its (already counted) weight, and LoRA stores each adapted layer's
input (a second, dropped-out copy of it plus the dropout mask when lora dropout > 0).

:func:`peftlab.estimate.activations_encoder.saved_bytes` walks a BERT-like encoder (BERT, RoBERTa,
XLM-R: post-LayerNorm blocks) one layer at a time, following whether each tensor requires grad, and adds what each op saves. The
counts follow torch 2.x: on a CPU, scaled-dot-product attention with dropout runs the "math" path,
which keeps the T x T probabilities three times (softmax output, dropout mask, dropped
probabilities); without attention dropout (and on CUDA, with it) the fused kernel keeps only q, k,
v, the output, a log-sum-exp per row and a copy of the padding mask. CPU dropout keeps a float
mask of its input's dtype; CUDA's fused dropout a byte mask. A :class:`Step` says how the step
computes: in fp32, or under bf16/fp16 autocast, where every linear keeps a 2-byte copy of its
input (one per linear: autocast casts an fp32 input at each call) and, when its input needs a
gradient, of its weight, while norms, residual sums and the loss stay fp32.
tests/test_activations.py checks the count against the bytes that
``torch.autograd.graph.saved_tensors_hooks`` sees on tiny models, method by method, in fp32 and
under CPU bf16 autocast (peftlab's training path, and peft's own casts as on CUDA).

A method says how gradients flow through it with a :class:`Flow`, which its own ``flow`` builds
(every registered method declares one: :mod:`peftlab.methods`). This module holds the flow and step
types and the terms of a linear layer both walks share; :mod:`peftlab.estimate.activations_encoder`
walks BERT-like encoders, :mod:`peftlab.estimate.activations_decoder` Llama-style decoders, and
:mod:`peftlab.estimate.activation_flows` picks the walk per family.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from peftlab.estimate.params import ArchSpec, matches_target

#: activation functions whose backward needs the result (1 saved tensor shared with the next linear)
#: rather than the input (2: the input, and the output kept by the next linear)
SAVES_RESULT = {"relu", "tanh", "sigmoid"}


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
    #: the frozen linears are bitsandbytes' (QLoRA): their matmul keeps the packed weight (a
    #: parameter), never a cast copy of it, and under autocast returns its input's dtype (fp32 from
    #: an fp32 input), so the feed-forward's wide tensors stay fp32 there
    quantized_base: bool = False
    #: the prompt or prefix encoder's linear weights (values): under autocast each keeps a
    #: low-precision copy once per step (its input, the trained embedding, needs a gradient)
    encoder_weights: int = 0
    #: False: the method's own layers are not followed under autocast (p-tuning's LSTM): its whole
    #: count stays the fp32 one, an upper bound
    autocast_followed: bool = True


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
    #: bytes of a dropout mask: 0 = those of the tensor it masks (a CPU dropout, torch's or
    #: peftlab's, keeps a mask of its input's dtype), 1 on CUDA (fused dropout, a bool mask)
    mask_bytes: int = 0
    value_bytes: int = 4
    #: bytes of what a matmul-class op computes: 2 under bf16/fp16 autocast (the low-precision
    #: copies of the linears' inputs and weights they keep, their outputs, attention), else 4
    low_bytes: int = 4
    #: "cpu" or "cuda": where attention with dropout runs (the CPU's math path keeps the
    #: probabilities; CUDA's fused kernel drops inside and keeps none) and LoRA casts (below)
    device: str = "cpu"
    #: CPU dropouts are peftlab's BitsDropout (peftlab.backbones.dropout), and attention with dropout
    #: is peftlab's math path (peftlab.backbones.attention), which also keeps its boolean masks
    bits_dropout: bool = False
    #: peftlab's lean LoRA casts (CPU autocast, peftlab.backbones.cpu_train): a LoRA layer whose
    #: dropout is a BitsDropout (or none) keeps its input as it is, without peft's fp32 cast
    lean_casts: bool = False
    labels: int = 2
    #: decoders: width of all query heads together (heads x head_dim), and of the key (= value)
    #: projection (grouped key/value heads x head_dim)
    q_width: int = 0
    kv_width: int = 0


@dataclass(frozen=True)
class Step:
    """How a training step computes, which decides the bytes of what it keeps: the device, bf16/fp16
    autocast or fp32, and (CPU) whether peftlab's dropout sampler is in use."""

    device: str = "cpu"
    autocast: bool = False
    bits_dropout: bool = False
    #: None: as peftlab's training does it (lean casts under CPU autocast); False: peft's own casts
    lean_casts: bool | None = None

    def dims(self) -> dict[str, Any]:
        """The :class:`Dims` fields this step sets."""
        lean = self.device == "cpu" and self.autocast if self.lean_casts is None else self.lean_casts
        return {"device": self.device, "mask_bytes": 1 if self.device == "cuda" else 0,
                "low_bytes": 2 if self.autocast else 4, "bits_dropout": self.bits_dropout, "lean_casts": lean}


def counting_dims(f: Flow, d: Dims) -> Dims:
    """``d``, or under autocast for a flow the walk does not follow there (:func:`autocast_counted`)
    ``d`` with every value counted at fp32."""
    return d if autocast_counted(f) else replace(d, low_bytes=d.value_bytes)


def autocast_counted(f: Flow) -> bool:
    """Whether the walk follows ``f`` op by op under autocast: full and partial fine-tuning, LoRA
    (plain; QLoRA), (IA)^3, bottleneck adapters, trained norms, prompt and prefix tuning, p-tuning's
    MLP encoder. For the rest (DoRA, side branches, weight deltas, built weights, p-tuning's LSTM)
    the count stays the fp32 one, an upper bound (tests/test_activations.py)."""
    return f.autocast_followed and not (f.dora or f.branch or f.delta or f.built)


class _Tally:
    """Bytes kept for backward; each tensor is added once (a tensor saved by two ops is one buffer)."""

    def __init__(self, d: Dims) -> None:
        self.d, self.total = d, 0
        self.rotary = False  # decoders: some block's rotary embedding needs its cos/sin tables

    @property
    def autocast(self) -> bool:
        return self.d.low_bytes < self.d.value_bytes

    def values(self, n: int, kept: bool = True, low: bool = False) -> None:
        """``n`` values, of the low-precision kind (``low``: a matmul's, 2 bytes under autocast) or fp32."""
        self.total += n * (self.d.low_bytes if low else self.d.value_bytes) if kept else 0

    def mask(self, n: int, p: float, kept: bool = True, low: bool = False) -> None:
        """A dropout keeps its mask when a gradient flows through it (its output is a new tensor);
        on a CPU the mask has the dtype of what it masks (``low``), on CUDA it is a bool."""
        size = self.d.mask_bytes or (self.d.low_bytes if low else self.d.value_bytes)
        self.total += n * size if kept and p > 0 else 0


def _linear_in(t: _Tally, f: Flow, name: str, n_in: int, x_kept: bool, x_grad: bool, block_trains: bool,
               r_tokens: int, x_low: bool = False, d_out: int = 0) -> tuple[bool, bool]:
    """What one linear keeps of its input ``x`` (``n_in`` values). Returns (x now kept, output needs grad).

    A weight that trains needs ``x``; a frozen weight needs nothing of it. A LoRA branch needs
    its A's input (``x`` itself, or with dropout a dropped copy plus the mask) and A's output
    (r values per token) for B. An (IA)^3 input scale needs ``x`` for the scale's gradient. A
    frozen side branch keeps what its method says per token (:attr:`Flow.branch`); a weight delta
    (:attr:`Flow.delta`) needs ``x``, and is itself kept when a gradient flows into ``x``.
    """
    if t.autocast:
        return _linear_in_autocast(t, f, name, n_in, x_kept, x_grad, block_trains, r_tokens, x_low, d_out)
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


def _linear_in_autocast(t: _Tally, f: Flow, name: str, n_in: int, x_kept: bool, x_grad: bool, block_trains: bool,
                        tokens: int, x_low: bool, d_out: int) -> tuple[bool, bool]:
    """:func:`_linear_in` under autocast (``x_low``: ``x`` is already low precision, a matmul's output).

    Autocast casts a linear's fp32 input to a new low-precision copy at every call (only trained
    leaf weights are cast once and cached), so linears reading the same fp32 ``x`` keep a copy each
    where in fp32 they share ``x``; a low-precision ``x`` is kept as it is, once. A linear whose
    input needs a gradient keeps the low-precision copy of its weight, frozen or not (bitsandbytes'
    quantised weights excepted). LoRA: peft casts the input to fp32 before the dropout (lora_A then
    keeps the dropped input cast back); under peftlab's lean casts (CPU, BitsDropout or no dropout) a
    low-precision input is dropped as it is. lora_A's output is kept for lora_B, and both adapter
    weights' low copies where their inputs need gradients.
    """
    d_in = n_in // tokens
    lora, scaled_in = name in f.lora, f.ia3.get(name, False)
    if (x_grad or scaled_in) and not f.quantized_base:
        t.values(d_in * d_out, low=True)  # the weight's low copy, for the input's gradient
    if scaled_in:  # (IA)^3 scales the input in fp32 (peft casts it to the vector's dtype) and keeps it
        if x_low:
            t.values(n_in)  # a new fp32 copy
        elif not x_kept:
            t.values(n_in)
            x_kept = True
    if block_trains:
        if not x_low:
            t.values(n_in, low=True)  # this linear's own cast of x
        elif not x_kept:
            t.values(n_in, low=True)
            x_kept = True
    if lora:
        p = f.lora[name]
        lean = t.d.lean_casts and (p == 0 or t.d.bits_dropout)
        if p > 0:
            t.mask(n_in, p, x_grad, low=lean and x_low)
            t.values(n_in, low=True)  # the dropped input as lora_A keeps it (low)
        elif lean and x_low:
            if not x_kept:
                t.values(n_in, low=True)
                x_kept = True
        else:
            t.values(n_in, low=True)  # a new low copy (peft's fp32 cast, or x's own cast)
        t.values(tokens * f.lora_r, low=True)  # lora_A's output, kept by lora_B
        t.values(f.lora_r * d_in, x_grad, low=True)  # lora_A's weight copy, for the input's gradient
        t.values(f.lora_r * d_out, low=True)  # lora_B's weight copy (its input, A's output, needs one)
    return x_kept, x_grad or block_trains or lora or name in f.ia3


def _linear_out(t: _Tally, f: Flow, name: str, n_out: int, y_grad: bool) -> tuple[bool, bool]:
    """After a linear: an (IA)^3 output scale keeps the unscaled output; a bottleneck adapter keeps
    its input (the linear's output) and its hidden activation. Returns (output kept, output needs grad)."""
    kept, low = False, t.autocast  # under autocast the output and the adapter's tensors are low precision
    if name in f.ia3 and not f.ia3[name]:
        t.values(n_out, low=low)
        kept = True
    if name in f.adapters:
        b, act = f.adapters[name]
        h = t.d.hidden
        tokens = n_out // h
        if not kept:
            t.values(n_out, low=low)  # adapter.down keeps its input
        t.values(tokens * b * (1 if act in SAVES_RESULT else 2), low=low)
        t.values(h * b, low and y_grad, low=True)  # down's weight copy, where its input needs a gradient
        t.values(b * h, low, low=True)  # up's (its input, from the trained down, always needs one)
        y_grad = True
    return kept, y_grad


def _encoders(t: _Tally, f: Flow) -> None:
    """A prompt encoder (run once, its output repeated over the batch) and a prefix encoder (run for
    every example), with their weights' low copies under autocast."""
    t.values(f.prompt_tokens * f.prompt_encoder_values, low=t.autocast)
    t.values(t.d.batch * f.prefix_tokens * f.prefix_encoder_values, low=t.autocast)
    t.values(f.encoder_weights, t.autocast, low=True)


def backward_working_bytes(f: Flow, d: Dims) -> int:
    """Gradient buffers alive at once on top of the kept tensors, at the backward's peak.

    The backward of one math-path attention holds the gradients of the dropped probabilities, of
    the probabilities and of the scores together (3 tensors of ``heads x tokens x keys``); a
    feed-forward backward holds two of width i (the GELU's output and input gradients). Measured on
    MiniLM-L6 with freed memory returned at once (a fixed glibc mmap threshold): peak minus
    weights, optimizer and kept tensors = 34-37 MB, 3 x 12.6 MB here.
    """
    d = counting_dims(f, d)
    tokens = d.batch * (d.length + f.prompt_tokens)
    keys = d.length + f.prompt_tokens + f.prefix_tokens
    attention = 3 * d.heads * tokens * keys if d.attention_dropout > 0 and d.device != "cuda" else 0
    return max(d.value_bytes * attention, d.low_bytes * 2 * tokens * d.inter)
