"""The activation count of :mod:`peftlab.estimate.activations` for Llama-style decoders (Llama, Mistral).

A pre-RMSNorm block: ``x + attn(norm(x))`` then ``+ mlp(norm(.))`` with rotary positions, grouped
key/value heads and a SiLU-gated MLP, no dropout; the head (``score``) reads every position, so it
keeps the final norm's output (``tokens x hidden``). What each op keeps, when a gradient flows:

* RMSNorm: its input and one 1/rms per token (for the input's gradient), its normalised input
  (for a trained weight),
* rotary: the shared cos and sin tables (once per step, all blocks use the same tensors),
* attention (the flash kernel on CPU, attention dropout 0): the rotated query, the keys and values
  repeated to every query head (transformers repeats them when a padding mask is given), the
  output (which the o_proj input views), a log-sum-exp per head and query, a float mask,
* gated MLP: gate output (SiLU's input), SiLU output and up output (the product's two factors),
  and the product when down_proj's weight trains.

tests/test_activations.py checks this against saved-tensor hooks on a tiny Llama.
"""

from __future__ import annotations

from typing import Any

from peftlab.estimate.activations import Dims, Flow, Step, _encoders, _linear_in, _linear_out, _Tally, counting_dims
from peftlab.estimate.params import ArchSpec

Q, K, V, O = "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"
GATE, UP, DOWN = "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"
ATTN_NORM, MLP_NORM = "input_layernorm", "post_attention_layernorm"


def decoder_dims(spec: ArchSpec, conf: Any, batch: int, length: int, step: Step = Step()) -> Dims:
    heads = int(conf.num_attention_heads)
    head_dim = int(getattr(conf, "head_dim", None) or spec.hidden // heads)
    return Dims(batch=batch, length=length, hidden=spec.hidden, inter=int(conf.intermediate_size), heads=heads,
                layers=spec.num_layers, hidden_dropout=0.0,
                attention_dropout=float(getattr(conf, "attention_dropout", 0.0) or 0.0), classifier_dropout=0.0,
                labels=spec.num_labels, q_width=heads * head_dim, kv_width=spec.kv_dim or heads * head_dim,
                **step.dims())


def _rms_norm(t: _Tally, d: Dims, tokens: int, x_grad: bool, trains: bool) -> bool:
    """Returns whether the norm's output needs a gradient."""
    if x_grad:
        t.values(tokens * d.hidden + tokens)  # input (for pow) and 1/rms
    if trains:
        t.values(tokens * d.hidden)  # the normalised input, for the weight's gradient
    return x_grad or trains


def _attention(t: _Tally, d: Dims, f: Flow, tokens: int, q_grad: bool, k_grad: bool, v_grad: bool) -> bool:
    """Flash attention over ``tokens`` queries and ``tokens + prefix`` keys; keeps its inputs when any
    gradient flows. Returns whether the output needs a gradient."""
    if not (q_grad or k_grad or v_grad):
        return False
    keys = tokens + f.prefix_tokens * d.batch
    t.rotary = True
    # under autocast q and k (fp32 after the fp32 rotary tables) reach the kernel as low copies
    t.values((tokens + 2 * keys + tokens) * d.q_width + tokens * (keys // d.batch), low=True)
    t.values(d.heads * tokens)  # the log-sum-exp (fp32)
    return True


def _block(t: _Tally, d: Dims, f: Flow, i: int, tokens: int, x_grad: bool) -> bool:
    trains, low, h = i in f.trained_blocks, t.autocast, d.hidden
    n, wide = tokens * d.hidden, tokens * d.inter
    h_grad = _rms_norm(t, d, tokens, x_grad, trains or ATTN_NORM in f.norms)
    grads, kept = [], False
    for name in (Q, K, V):
        width = d.q_width if name == Q else d.kv_width
        kept, g = _linear_in(t, f, name, n, kept, h_grad, trains, tokens, d_out=width)
        _, g = _linear_out(t, f, name, tokens * width, g)
        grads.append(g or (f.prefix_tokens > 0 and name != Q))
    ctx_grad = _attention(t, d, f, tokens, *grads)
    _, g = _linear_in(t, f, O, tokens * d.q_width, True, ctx_grad, trains, tokens, x_low=low, d_out=h)
    _, g = _linear_out(t, f, O, n, g)
    y_grad = g or x_grad
    h_grad = _rms_norm(t, d, tokens, y_grad, trains or MLP_NORM in f.norms)
    kept, gate_grad = _linear_in(t, f, GATE, n, False, h_grad, trains, tokens, d_out=d.inter)
    _, gate_grad = _linear_out(t, f, GATE, wide, gate_grad)
    _, up_grad = _linear_in(t, f, UP, n, kept, h_grad, trains, tokens, d_out=d.inter)
    _, up_grad = _linear_out(t, f, UP, wide, up_grad)
    wide_low = low and not f.quantized_base  # bitsandbytes: an fp32 input gives an fp32 output
    t.values(wide, gate_grad, low=wide_low)  # SiLU's input
    t.values(wide, up_grad, low=wide_low)  # SiLU's output, for up's gradient
    t.values(wide, gate_grad, low=wide_low)  # up's output, for SiLU's gradient
    _, g = _linear_in(t, f, DOWN, wide, False, gate_grad or up_grad, trains, tokens, x_low=wide_low, d_out=h)
    _, g = _linear_out(t, f, DOWN, n, g)
    return g or y_grad


def decoder_saved_bytes(f: Flow, d: Dims) -> int:
    """Bytes autograd keeps for backward in one training step of a Llama-style classifier."""
    t = _Tally(counting_dims(f, d))
    d = t.d
    tokens = d.batch * (d.length + f.prompt_tokens)
    _encoders(t, f)
    if f.embeddings:
        t.total += 8 * tokens  # the token ids, for the embedding's gradient
    g = f.embeddings or f.prompt_tokens > 0
    for i in range(d.layers):
        g = _block(t, d, f, i, tokens, g)
    if t.rotary:
        t.values(2 * (d.length + f.prompt_tokens) * (d.q_width // d.heads))  # cos and sin
    g = _rms_norm(t, d, tokens, g, f.post)
    t.values(tokens * d.hidden, low=t.autocast)  # the score head reads (and keeps) every position
    t.values(d.hidden * d.labels, g and t.autocast, low=True)  # its weight's low copy
    t.values(d.batch * d.labels)  # log-softmax of the pooled logits
    t.total += 8 * 3 * d.batch  # last-token indices, batch arange, labels (int64)
    return t.total
