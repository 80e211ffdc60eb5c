"""Useful training FLOPs: how much matrix arithmetic a training step really needs.

The count is over the weight matrices (``nn.Linear``) only: embeddings are look-ups (no FLOPs),
and biases, norms, activations and the attention score/value products are left out (for
MiniLM-L6 at ~40 tokens the attention products are ~2% of the linear FLOPs). A linear layer
with ``n`` weight elements costs per input row (token, or sequence for the pooler and head):

* forward ``2n`` always;
* input gradient ``2n`` only when its input needs a gradient, i.e. something trainable lies
  below it (frozen layers under the first trainable one need none);
* weight gradient ``2n`` only when its weight is trainable.

Full fine-tuning (trainable embeddings, so every input needs a gradient) is the textbook
``6N`` per token; LoRA on a frozen base is ``2N`` forward through the whole base, ``2N`` of
input gradients for the layers above the first adapter, and about ``6`` per adapter weight.
Padding tokens are computed but not useful: callers pass the number of real (non-pad) tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LinearUse:
    """One linear layer as a training step uses it."""

    params: int  # weight elements (in_features * out_features)
    trainable: bool  # its weight gets a gradient
    input_grad: bool  # the gradient is propagated to its input
    per_token: bool = True  # applied to every token (False: once per sequence, e.g. pooler, head)


def row_flops(use: LinearUse) -> int:
    """Training FLOPs of one input row through ``use``: forward, input and weight gradients."""
    return 2 * use.params * (1 + int(use.input_grad) + int(use.trainable))


def training_flops(uses: Iterable[LinearUse], tokens: int, sequences: int) -> int:
    """FLOPs of a training step over ``tokens`` real tokens in ``sequences`` sequences."""
    return sum(row_flops(u) * (tokens if u.per_token else sequences) for u in uses)


def full_ft_flops_per_token(n_nonembedding: int) -> int:
    """The textbook count for full fine-tuning: ``6N`` (N = non-embedding weight elements)."""
    return 6 * n_nonembedding


def frozen_base_flops_per_token(n_base: int, n_base_above: int, n_adapter: int) -> int:
    """A frozen base with adapters: ``2N`` forward + ``2 N_above`` input gradients + ``6 A``.

    ``n_base_above``: frozen weights whose inputs need gradients (those above the first
    trainable layer); ``n_adapter``: the trainable adapter weights.
    """
    return 2 * n_base + 2 * n_base_above + 6 * n_adapter


def gemm_flops(m: int, k: int, n: int) -> int:
    """An (m x k) @ (k x n) product: ``2mkn`` (a multiply and an add per term)."""
    return 2 * m * k * n


def utilisation(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Achieved FLOP/s as a share of the measured peak."""
    if seconds <= 0 or peak_flops_per_s <= 0:
        raise ValueError("seconds and peak must be positive")
    return flops / seconds / peak_flops_per_s


def summarise(uses: Iterable[LinearUse]) -> Mapping[str, int]:
    """Weight elements by role: base (frozen), base_above (frozen, input gradient), trainable."""
    out = {"base": 0, "base_above": 0, "trainable": 0}
    for u in uses:
        if u.trainable:
            out["trainable"] += u.params
        else:
            out["base"] += u.params
            out["base_above"] += u.params if u.input_grad else 0
    return out


def linear_uses(model: Any, batch: Mapping[str, Any]) -> list[LinearUse]:
    """Observe one training-mode forward of ``model`` on ``batch``: each linear layer's use.

    Hooks see whether each layer's input requires grad (exact, whatever the method froze)
    and whether it ran per token or once per sequence; each call counts (a layer used twice
    appears twice). The model's train/eval mode is restored.
    """
    import torch
    from torch import nn

    rows_per_seq = int(batch["input_ids"].shape[1]) if "input_ids" in batch else None
    seqs = int(next(iter(batch.values())).shape[0])
    uses: list[LinearUse] = []

    def hook(mod: nn.Linear, args: tuple[Any, ...], _out: Any) -> None:
        x = args[0]
        rows = x.numel() // x.shape[-1]
        uses.append(LinearUse(params=mod.weight.numel(), trainable=mod.weight.requires_grad,
                              input_grad=bool(x.requires_grad), per_token=rows != seqs or rows_per_seq == 1))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.train()
        with torch.enable_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return uses
