"""Measure what autograd really keeps for backward: the check on :mod:`peftlab.activations`.

``saved_tensors_hooks`` sees every tensor an op saves for its backward. Counting each underlying
storage once (q, k and v save the same input; a view pins its whole storage) and leaving out
parameters (counted as weights, not activations) gives the bytes the closed form predicts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def saved_tensor_bytes(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct non-parameter storages saved for backward by one training forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> Any:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()  # frees the graph; also proves a gradient reaches something
    return sum(seen.values())
