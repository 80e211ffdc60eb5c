"""The activation count of :mod:`peftlab.estimate.activations` for BERT-like encoders (BERT, RoBERTa, XLM-R).

Post-LayerNorm blocks: self-attention (q, k, v from the block input, the CPU's math path with
attention dropout, else a fused kernel), output dense, dropout, residual, LayerNorm; then a GELU
feed-forward with the same residual and norm. The head is BERT's pooler on the first token (or
RoBERTa's dense + out_proj). :mod:`peftlab.estimate.activations` holds the flow and step types and
the linear layers' terms both walks share; tests/test_activations.py checks the count against
saved-tensor hooks.
"""

from __future__ import annotations

from typing import Any

from peftlab.estimate.activations import Dims, Flow, Step, _encoders, _linear_in, _linear_out, _Tally, counting_dims
from peftlab.estimate.params import ArchSpec

#: the block-relative names of the linears of a BERT-like layer
QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
ATTN_OUT, FFN_IN, FFN_OUT = "attention.output.dense", "intermediate.dense", "output.dense"
#: the block-relative names of its two LayerNorms (after attention, after the feed-forward)
ATTN_NORM, FFN_NORM = "attention.output.LayerNorm", "output.LayerNorm"


def dims_of(spec: ArchSpec, conf: Any, batch: int, length: int, step: Step = Step()) -> Dims:
    h = spec.hidden
    cls_p = getattr(conf, "classifier_dropout", None)
    hid_p = float(getattr(conf, "hidden_dropout_prob", 0.1) or 0.0)
    return Dims(batch=batch, length=length, hidden=h,
                inter=int(getattr(conf, "intermediate_size", 4 * h) or 4 * h),
                heads=int(getattr(conf, "num_attention_heads", 1) or 1), layers=spec.num_layers,
                hidden_dropout=hid_p,
                attention_dropout=float(getattr(conf, "attention_probs_dropout_prob", 0.1) or 0.0),
                classifier_dropout=hid_p if cls_p is None else float(cls_p), labels=spec.num_labels,
                **step.dims())


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
    if d.attention_dropout > 0 and d.device != "cuda":
        # the CPU's math path: q*s @ (k*s)^T -> softmax -> dropout -> @ v, in fp32 (under autocast
        # SDPA's math path and peftlab's both upcast q, k and v to fp32 copies first)
        probs = d.heads * tokens * (keys // d.batch)
        scores_grad = q_grad or k_grad
        t.values(n_q, k_grad)  # the scaled query, for k's gradient
        t.values(n_k, q_grad)  # the scaled key, for q's gradient
        t.values(probs, scores_grad)  # softmax output
        t.mask(probs, d.attention_dropout, scores_grad)
        t.values(probs, v_grad)  # dropped probabilities, for v's gradient
        t.values(n_k, scores_grad)  # v, for the probabilities' gradient
        if d.bits_dropout and scores_grad:  # peftlab's math path masks with booleans: both masks kept
            t.total += tokens * (keys // d.batch) + tokens
        return True, False
    # fused kernel (a CPU's flash kernel without dropout, CUDA's with dropout inside): q, k, v, the
    # output (whose storage the context reuses), a log-sum-exp per head and query, and its own copy
    # of the padding mask (as a float of the query's dtype)
    t.values(2 * n_q + 2 * n_k + tokens * (keys // d.batch), low=True)
    t.values(d.heads * tokens)
    return True, True


def _residual_norm(t: _Tally, d: Dims, tokens: int, branch_grad: bool, res_grad: bool, trains: bool,
                   branch_low: bool = True) -> bool:
    """dropout(branch) + residual -> LayerNorm; returns whether the LayerNorm's output needs a gradient.
    The branch is a linear's output (``branch_low``: low precision under autocast); the sum is fp32
    (the residual is)."""
    n = tokens * d.hidden
    t.mask(n, d.hidden_dropout, branch_grad, low=branch_low)
    grad = branch_grad or res_grad or trains
    _layer_norm(t, n, tokens, grad)
    return grad


def _block(t: _Tally, d: Dims, f: Flow, i: int, tokens: int, x_grad: bool) -> bool:
    """One post-LayerNorm encoder block; returns whether its output needs a gradient."""
    n, wide, trains = tokens * d.hidden, tokens * d.inter, i in f.trained_blocks
    grads, x_kept = [], False
    low, h, i_ = t.autocast, d.hidden, d.inter  # under autocast the linears' outputs are low precision
    wide_low = low and not f.quantized_base  # bitsandbytes: an fp32 input gives an fp32 output
    for name in QKV:  # q, k, v all read the block input x: it is kept at most once (fp32)
        x_kept, g = _linear_in(t, f, name, n, x_kept, x_grad, trains, tokens, d_out=h)
        _, g = _linear_out(t, f, name, n, g)
        grads.append(g or (f.prefix_tokens > 0 and name != QKV[0]))
    ctx_grad, ctx_kept = _attention(t, d, f, tokens, *grads)
    # context -> attention.output.dense -> dropout -> + x -> LayerNorm
    _, g = _linear_in(t, f, ATTN_OUT, n, ctx_kept, ctx_grad, trains, tokens, x_low=low, d_out=h)
    _, g = _linear_out(t, f, ATTN_OUT, n, g)
    y_grad = _residual_norm(t, d, tokens, g, x_grad, trains or ATTN_NORM in f.norms)
    # y -> intermediate.dense -> GELU -> output.dense -> dropout -> + y -> LayerNorm
    _, g = _linear_in(t, f, FFN_IN, n, False, y_grad, trains, tokens, d_out=i_)
    _, g = _linear_out(t, f, FFN_IN, wide, g)
    t.values(wide, g, low=wide_low)  # GELU keeps its input
    _, g = _linear_in(t, f, FFN_OUT, wide, False, g, trains, tokens, x_low=wide_low, d_out=h)
    _, g = _linear_out(t, f, FFN_OUT, n, g)
    return _residual_norm(t, d, tokens, g, y_grad, trains or FFN_NORM in f.norms, branch_low=wide_low)


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
    t = _Tally(counting_dims(f, d))
    d = t.d
    tokens = d.batch * (d.length + f.prompt_tokens)
    n = tokens * d.hidden
    _encoders(t, f)
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
    b, h, low = d.batch, d.hidden, t.autocast
    if pooler:
        # fp32: the first token's view pins the whole last hidden state; autocast keeps its own cast
        t.values(b * h if low else tokens * h, low=low)
        t.values(h * h, g and low, low=True)  # the dense weight's low copy
        g = True
        t.values(b * h, g, low=low)  # tanh keeps its output
    else:  # RoBERTa's head: dropout -> dense (trained) -> tanh -> dropout -> out_proj
        t.mask(b * h, d.classifier_dropout, g)
        t.values(2 * b * h, low=low)  # dense's input (its cast under autocast), tanh's output
        t.values(h * h, g and low, low=True)
        g = True
    t.mask(b * h, d.classifier_dropout, g, low=low)
    t.values(b * h, low=low)  # the classifier's input
    t.values(h * d.labels, low, low=True)  # its weight's low copy (its input needs a gradient)
    t.values(b * d.labels)  # log-softmax output of the loss (fp32 under autocast too)
    t.total += 8 * b  # the labels (int64)
