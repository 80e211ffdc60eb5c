"""How far an adaptation moved the backbone: linear CKA of pooled features, LM loss on a fixed text.

Accuracy says what a method achieved; these say what it cost the pretrained model (issue 22,
"forgetting"). Linear CKA (Kornblith et al. 2019) compares two sets of features of the same
inputs and is invariant to orthogonal rotations and isotropic scaling, so it is comparable across
methods that reparameterise the backbone differently: 1 = the same representation, near 0 =
unrelated. Pure numpy, so the report side never needs torch.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA of features ``x`` (n, p) and ``y`` (n, q) of the same n inputs.

    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred features, in float64 (the
    squared norms of fp16/bf16 features would overflow or lose the difference between near-1
    values). Features with no variance (a constant model) give 0 rather than a division by zero:
    such a representation carries nothing of the other.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"linear_cka: need (n, p) and (n, q) features of the same n inputs, got {a.shape} and {b.shape}")
    a = a - a.mean(axis=0, keepdims=True)
    b = b - b.mean(axis=0, keepdims=True)
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    if den == 0.0:
        return 0.0
    return float(np.linalg.norm(b.T @ a) ** 2 / den)
