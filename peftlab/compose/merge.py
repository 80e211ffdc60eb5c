"""Non-linear merges of task vectors (``--combine``): TIES, DARE, magnitude pruning, task arithmetic.

The linear rule of Zhang et al. (``--combine linear``, the default) is each method's own
(:mod:`peftlab.methods.lora`, :mod:`peftlab.methods.ia3`). The merges here act on *task vectors*:
the exact update of each operand (LoRA: ``dW = s B A`` per adapted linear, so only in weight
mode; (IA)^3: ``l - 1``, both modes), weighted by the operand's coefficient in the expression:

* ``task_arithmetic`` (Ilharco et al. 2023): ``sum c_i t_i``.
* ``magnitude_prune``: each ``t_i`` trimmed to its top ``density`` magnitudes, then summed.
* ``ties`` (Yadav et al. 2023): trim as above; elect each entry's sign as the sign of the sum of
  the weighted trimmed vectors (summed magnitude); average, per entry, only the weighted values
  that agree with the elected sign (the disjoint mean: zeros and dissenters do not count).
* ``dare_linear`` (Yu et al. 2023): drop each entry with probability ``p = 1 - density``
  (seeded), rescale the survivors by ``1 / (1 - p)`` so the expected vector is unchanged, sum.
* ``dare_ties``: DARE's drop and rescale, then TIES' sign election and disjoint mean.

These are not linear in the operands (``ties(a, a) != 2 a``), so the expression must be a
weighted sum naming each operand once (:func:`peftlab.compose.expr.weighted_terms`). A uniform
coefficient ``c`` in ``c*a + c*b`` is the papers' scaling ``lambda`` of the merged vector.

Pure functions: tensors in, tensors out, float64 throughout (the caller converts).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import torch

from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import TaskMerge

#: the combine of Zhang et al. (each method's own rule, parameter or weight mode)
LINEAR = "linear"
#: combines that keep a fraction ``density`` of each task vector
DENSITY_COMBINES = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
#: combines that drop at random (seeded)
RANDOM_COMBINES = ("dare_linear", "dare_ties")
#: the name ``--sweep`` gives the density (``--sweep density=0.2:1:0.2``)
DENSITY = "density"
#: every ``--combine`` value; all but ``linear`` are merges of task vectors (this module)
COMBINES = (LINEAR, *DENSITY_COMBINES, "task_arithmetic")


def trim(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``round(density * numel)`` largest magnitudes (at least one), zero the rest.

    TIES' first step: most of a fine-tuned update is small redundant noise whose signs
    interfere with other tasks' updates; exactly ``k`` entries are kept, ties broken by topk.
    """
    k = max(1, round(density * t.numel()))
    if k >= t.numel():
        return t.clone()
    flat = t.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(t.shape)


def dare(t: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability ``p = 1 - density``; rescale survivors by ``1 / (1 - p)``.

    DARE's point: delta parameters are so redundant that a random 90% can go if the rest is
    rescaled to keep the expectation; ``density = 1`` is the identity (nothing drawn matters).
    """
    if density >= 1.0:
        return t.clone()
    keep = torch.rand(t.shape, generator=generator, dtype=torch.float64) < density
    return torch.where(keep, t / density, torch.zeros_like(t))


def elect_sign(stacked: torch.Tensor) -> torch.Tensor:
    """Per entry, the sign of the sum over vectors (dim 0): the sign with more total magnitude.

    An exact tie (sum 0) elects no sign (0), so no value of that entry survives the disjoint mean.
    """
    return torch.sign(stacked.sum(dim=0))


def disjoint_mean(stacked: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean of the values whose sign is the elected one (zeros never count):
    averaging over agreeing tasks only keeps one task's update from being diluted by others
    that did not touch (trimmed to 0) or pushed the other way."""
    agree = torch.sign(stacked) == sign.unsqueeze(0)
    agree &= stacked != 0
    total = torch.where(agree, stacked, torch.zeros_like(stacked)).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1).to(stacked.dtype)


def ties_merge(vectors: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES: trim each vector, weight it, elect signs, disjoint mean."""
    stacked = torch.stack([w * trim(t, density) for t, w in zip(vectors, weights)])
    return disjoint_mean(stacked, elect_sign(stacked))


def weighted_sum(vectors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    return torch.stack([w * t for t, w in zip(vectors, weights)]).sum(dim=0)


def module_generator(seed: int, key: str) -> torch.Generator:
    """A generator for one module's drops, from the seed and the module's name: the mask of a
    module does not depend on which other modules are adapted or in which order they come."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode("utf-8")))


def merge_vectors(combine: str, vectors: list[torch.Tensor], weights: list[float], density: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The merged task vector of one module by ``combine`` (any but ``linear``)."""
    if combine == "task_arithmetic":
        return weighted_sum(vectors, weights)
    if combine == "magnitude_prune":
        return weighted_sum([trim(t, density) for t in vectors], weights)
    if combine == "ties":
        return ties_merge(vectors, weights, density)
    if combine in RANDOM_COMBINES:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        dropped = [dare(t, density, gen) for t in vectors]
        if combine == "dare_linear":
            return weighted_sum(dropped, weights)
        stacked = torch.stack([w * t for t, w in zip(dropped, weights)])
        return disjoint_mean(stacked, elect_sign(stacked))
    raise PeftlabError(f"--combine {combine!r}: expected one of {', '.join(COMBINES)}")


@dataclass(frozen=True)
class MergeSpec:
    """What ``--combine``, ``--density`` and ``--seed`` ask for (checked by :meth:`checked`)."""

    combine: str = LINEAR
    density: float | None = None
    seed: int | None = None

    @property
    def is_linear(self) -> bool:
        return self.combine == LINEAR

    def checked(self) -> "MergeSpec":
        """Itself, or one PeftlabError line: an unknown combine, a density out of (0, 1] or
        missing where the combine needs one, or an option the combine would ignore."""
        if self.combine not in COMBINES:
            raise PeftlabError(f"--combine {self.combine!r}: expected one of {', '.join(COMBINES)}")
        if self.combine in DENSITY_COMBINES:
            if self.density is None:
                raise PeftlabError(f"--combine {self.combine} needs --density (the fraction of each task vector kept, 0 < density <= 1)")
            if not 0.0 < self.density <= 1.0:
                raise PeftlabError(f"--density {self.density:g}: the fraction kept must be in (0, 1]")
        elif self.density is not None:
            raise PeftlabError(f"--density applies to --combine {', '.join(DENSITY_COMBINES)}, not {self.combine}")
        if self.seed is not None and self.combine not in RANDOM_COMBINES:
            raise PeftlabError(f"--seed applies to --combine {' and '.join(RANDOM_COMBINES)} (random drops), not {self.combine}")
        return self

    def with_density(self, density: float) -> "MergeSpec":
        return replace(self, density=density).checked()

    def task_merge(self) -> TaskMerge:
        """The per-module merge a method's merger calls (DARE seeded per module)."""
        spec = self.checked()
        density, seed = spec.density if spec.density is not None else 1.0, spec.seed or 0

        def merge(key: str, vectors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
            return merge_vectors(spec.combine, vectors, weights, density, module_generator(seed, key))

        return merge

    def record(self) -> dict[str, object]:
        """What the composed adapter's ``peftlab_compose.json`` says about the merge."""
        return {"combine": self.combine, "density": self.density,
                "seed": (self.seed or 0) if self.combine in RANDOM_COMBINES else None}
