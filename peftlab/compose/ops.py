"""Arithmetic on adapters: pure functions of (coefficient, adapter) terms, one per method and mode.

Semantics (Zhang et al. 2023, "Composing Parameter-Efficient Modules with Arithmetic Operations"):

* LoRA, ``parameter`` mode (the paper's): the factors are combined element-wise,
  ``A = sum |l_i| A_i`` and ``B = sum l_i B_i``. A negative coefficient negates the module by
  flipping its update (``-B``), never both factors (which would cancel out). Both factors are
  scaled, so a lone ``l * a`` scales the update by ``l**2``; the paper's ``l a + (1 - l) b`` mixes.
  Needs equal ranks and alphas.
* LoRA, ``weight`` mode (exact): ``dW = sum l_i s_i B_i A_i`` (``s = alpha / r``), stored either
  exactly by concatenating the factors (rank = sum of ranks) or re-factorised by SVD to a chosen
  rank (the best rank-R approximation). Any ranks and alphas.
* (IA)^3: vectors are combined as deltas from the identity, ``l = 1 + sum c_i (l_i - 1)``: with
  coefficients summing to 1 that is the paper's weighted average, negation is ``2 - l`` (not
  ``-l``, which would flip every activation), and ``a - a`` is all ones (the base model). Because
  the scaled weight is ``diag(l) W``, this is also exact in weight space: both modes agree.

Heads (peft ``modules_to_save``, the classifier trained with each module) are not updates of a
shared base weight, so they are chosen by a policy (see :data:`HEAD_POLICIES`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from peftlab.compose.adapter import LORA_A, LORA_B, SUPPORTED, Adapter, head_tensors, lora_modules
from peftlab.errors import PeftlabError
from peftlab.registry import Registry

Terms = list[tuple[float, Adapter]]
#: (terms, rank) -> the combined adapter's tensors and config updates, without heads
Combiner = Callable[[Terms, int | None], tuple[dict[str, torch.Tensor], dict[str, object]]]
COMBINERS: Registry[Combiner] = Registry("composition mode")


def lora_scaling(ad: Adapter) -> float:
    """peft's scale of B A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    r, alpha = float(ad.config["r"]), float(ad.config["lora_alpha"])
    return alpha / r ** 0.5 if ad.config.get("use_rslora") else alpha / r


def lora_delta(ad: Adapter, prefix: str) -> torch.Tensor:
    """The weight update of one module, ``s * B @ A`` [d_out, d_in], in float64."""
    a, b = lora_modules(ad)[prefix]
    return lora_scaling(ad) * (b.double() @ a.double())


def _lora_parameter(terms: Terms, rank: int | None) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    if rank is not None:
        raise PeftlabError("--rank applies to --mode weight only (parameter mode keeps the operands' rank)")
    first = terms[0][1]
    out: dict[str, torch.Tensor] = {}
    for prefix, (a0, b0) in lora_modules(first).items():
        a = torch.zeros_like(a0)
        b = torch.zeros_like(b0)
        for coef, ad in terms:
            ai, bi = lora_modules(ad)[prefix]
            a = a + abs(coef) * ai
            b = b + coef * bi
        out[prefix + LORA_A], out[prefix + LORA_B] = a, b
    return out, {}


def _refactor(delta: torch.Tensor, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors (Eckart-Young): B = U sqrt(S), A = sqrt(S) V^T; zero-padded."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    b = torch.zeros(delta.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, delta.shape[1], dtype=torch.float64)
    b[:, :k] = u[:, :k] * root
    a[:k] = root[:, None] * vh[:k]
    return a.to(dtype), b.to(dtype)


def _lora_weight(terms: Terms, rank: int | None) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Exact concatenation ``[l_1 s_1 B_1 | ... ] [A_1; ...]`` or SVD to ``rank``; scaling becomes 1."""
    live = [(c, ad) for c, ad in terms if c != 0] or [(0.0, terms[0][1])]
    out_rank = rank if rank is not None else sum(int(ad.config["r"]) for _, ad in live)
    out: dict[str, torch.Tensor] = {}
    for prefix, (a0, _) in lora_modules(terms[0][1]).items():
        if rank is None:
            a = torch.cat([lora_modules(ad)[prefix][0] for _, ad in live], dim=0)
            b = torch.cat([c * lora_scaling(ad) * lora_modules(ad)[prefix][1] for c, ad in live], dim=1)
        else:
            delta = sum(c * lora_delta(ad, prefix) for c, ad in live)
            a, b = _refactor(delta, rank, a0.dtype)
        out[prefix + LORA_A], out[prefix + LORA_B] = a.to(a0.dtype), b.to(a0.dtype)
    # alpha = r makes peft's scale exactly 1 (plain alpha / r, so rsLoRA is switched off)
    return out, {"r": out_rank, "lora_alpha": out_rank, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}}


def _ia3(terms: Terms, rank: int | None) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    if rank is not None:
        raise PeftlabError("--rank applies to LoRA only ((IA)^3 modules are vectors)")
    first = terms[0][1]
    out = {}
    for key, l0 in first.tensors.items():
        if key.endswith(".ia3_l"):
            out[key] = 1 + sum((c * (ad.tensors[key] - 1) for c, ad in terms), torch.zeros_like(l0))
    return out, {}


COMBINERS.add("lora/parameter", _lora_parameter)
COMBINERS.add("lora/weight", _lora_weight)
COMBINERS.add("ia3/parameter", _ia3)
COMBINERS.add("ia3/weight", _ia3)


# ---- heads -------------------------------------------------------------------------------------

def _head_average(terms: Terms) -> dict[str, torch.Tensor]:
    """Coefficient-weighted average over the operands with positive coefficients."""
    pos = [(c, ad) for c, ad in terms if c > 0]
    if not pos:
        raise PeftlabError("--head average: no operand has a positive coefficient; choose one with --head NAME")
    heads = [head_tensors(ad) for _, ad in pos]
    labels = [ad.meta.get("labels") for _, ad in pos]
    for (_, ad), h, lab in zip(pos[1:], heads[1:], labels[1:]):
        shapes = {k: tuple(v.shape) for k, v in h.items()}
        if shapes != {k: tuple(v.shape) for k, v in heads[0].items()} or (lab and labels[0] and lab != labels[0]):
            raise PeftlabError(
                f"--head average: heads of {pos[0][1].name} and {ad.name} differ (labels or shapes); "
                "take one with --head first or --head NAME"
            )
    total = sum(c for c, _ in pos)
    return {k: sum(c / total * h[k] for (c, _), h in zip(pos, heads)) for k in heads[0]}


def choose_head(terms: Terms, policy: str, pool: dict[str, Adapter]) -> tuple[dict[str, torch.Tensor], Adapter]:
    """(head tensors, the adapter whose config/labels describe the head) for a policy.

    ``average``: coefficient-weighted average of the positive operands' heads (the right thing for
    modules of one task trained on different data); ``first``: the head of the first operand
    (``task + (b - c)``, ``task - l * skill``); any adapter name: that adapter's head.
    """
    if policy == "average":
        first_pos = next((ad for c, ad in terms if c > 0), terms[0][1])
        return _head_average(terms), first_pos
    if policy == "first":
        return head_tensors(terms[0][1]), terms[0][1]
    if policy in pool:
        return head_tensors(pool[policy]), pool[policy]
    raise PeftlabError(f"--head {policy!r}: expected average, first, or an adapter name ({', '.join(pool)})")


def combine(terms: Terms, mode: str = "parameter", rank: int | None = None, head: str = "average",
            pool: dict[str, Adapter] | None = None, name: str = "composed") -> Adapter:
    """The composed adapter of ``sum coef_i * adapter_i`` (terms already validated as compatible)."""
    if not terms:
        raise PeftlabError("nothing to compose: the expression names no adapter")
    if rank is not None and rank < 1:
        raise PeftlabError(f"--rank must be at least 1 (got {rank})")
    kind = SUPPORTED[terms[0][1].peft_type]  # qlora adapters are LoRA adapters
    tensors, updates = COMBINERS.get(f"{kind}/{mode}")(terms, rank)
    head, head_owner = choose_head(terms, head, pool or {ad.name: ad for _, ad in terms})
    meta = {**terms[0][1].meta, "labels": head_owner.meta.get("labels")}
    updates["modules_to_save"] = head_owner.config.get("modules_to_save") if head else None
    first = terms[0][1]
    return Adapter(name=name, config={**first.config, **updates, "inference_mode": True},
                   tensors={**tensors, **head}, meta=meta, source="", base_fp=first.base_fp)


# ---- the named operations, for Python users ----------------------------------------------------

def add(a: Adapter, b: Adapter, mode: str = "parameter", **kw: object) -> Adapter:
    return combine([(1.0, a), (1.0, b)], mode, **kw)  # type: ignore[arg-type]


def scale(a: Adapter, coef: float, mode: str = "parameter", **kw: object) -> Adapter:
    return combine([(coef, a)], mode, **kw)  # type: ignore[arg-type]


def negate(a: Adapter, mode: str = "parameter", **kw: object) -> Adapter:
    """The module that undoes ``a``: LoRA ``(A, -B)``, (IA)^3 ``2 - l``; the head is kept."""
    kw.setdefault("head", "first")
    return combine([(-1.0, a)], mode, **kw)  # type: ignore[arg-type]


def analogy(a: Adapter, b: Adapter, c: Adapter, mode: str = "parameter", **kw: object) -> Adapter:
    """``a + (b - c)``: a's skill moved along the direction from c's domain to b's; a's head."""
    kw.setdefault("head", "first")
    return combine([(1.0, a), (1.0, b), (-1.0, c)], mode, **kw)  # type: ignore[arg-type]


def zeros_like(a: Adapter) -> Adapter:
    """The zero module (no update; identity vectors for (IA)^3), with a's head."""
    kind = SUPPORTED[a.peft_type]
    t = {k: (torch.ones_like(v) if kind == "ia3" and k.endswith(".ia3_l") else
             v.clone() if k in head_tensors(a) else torch.zeros_like(v)) for k, v in a.tensors.items()}
    return a.with_tensors(t)
