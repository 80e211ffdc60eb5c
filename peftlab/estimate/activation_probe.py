"""Measure what autograd really keeps for backward: the check on :mod:`peftlab.estimate.activations`.

``saved_tensors_hooks`` sees every tensor an op saves for its backward. Counting each underlying
storage once (q, k and v save the same input; a view pins its whole storage) and leaving out
parameters (counted as weights, not activations) gives the bytes the closed form predicts.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn


def saved_tensor_bytes(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct non-parameter storages saved for backward by one training forward
    and still held when the backward starts.

    A tensor saved by a side graph that never reaches the loss (DoRA's weight norm is computed
    from B A through autograd, then detached) is freed with that graph inside the forward; it is
    a passing peak, not memory the backward needs, so only saved tensors still alive count.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: list[tuple[int, int, weakref.ref]] = []

    def pack(t: torch.Tensor) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved.append((storage.data_ptr(), storage.nbytes(), weakref.ref(t)))
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    alive: dict[int, int] = {}  # storage -> bytes (an address freed and reused counts its live storage)
    for ptr, nbytes, ref in saved:
        if ref() is not None:
            alive[ptr] = max(alive.get(ptr, 0), nbytes)
    kept = sum(alive.values())
    loss.backward()  # frees the graph; also proves a gradient reaches something
    return kept
