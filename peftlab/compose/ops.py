"""Arithmetic on adapters: ``sum coef_i * adapter_i`` by the rule of the adapters' method.

Each composable method declares its rule next to itself (``Method.composition``: LoRA's
parameter/weight modes in :mod:`peftlab.methods.lora`, (IA)^3's deltas from the identity in
:mod:`peftlab.methods.ia3`, after Zhang et al. 2023, "Composing Parameter-Efficient Modules with
Arithmetic Operations"); what is shared lives here.

Heads (peft ``modules_to_save``, the classifier trained with each module) are not updates of a
shared base weight, so they are chosen by a policy (see :func:`choose_head`).
"""

from __future__ import annotations

import torch

from peftlab.compose.adapter import Adapter, composition_of, head_tensors
from peftlab.compose.merge import MergeSpec
from peftlab.infra.errors import PeftlabError

Terms = list[tuple[float, Adapter]]


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


def _module_tensors(terms: Terms, mode: str, rank: int | None, merge: MergeSpec
                    ) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The method's rule for ``mode``: its linear combiner, or a merge of task vectors where the
    mode has task vectors (else one line: LoRA's factors are not its update, use weight mode)."""
    rule = composition_of(terms[0][1])  # qlora adapters are LoRA adapters
    if mode not in rule.combiners:
        raise PeftlabError(f"--mode {mode!r}: expected {' or '.join(rule.combiners)}")
    if merge.is_linear:
        return rule.combiners[mode](terms, rank)
    if mode not in rule.mergers:
        raise PeftlabError(f"--combine {merge.combine} merges task vectors, which {terms[0][1].method} has in weight "
                           f"space only (its {mode}-mode factors are not the update); use --mode weight")
    if merge.combine == "task_arithmetic" and mode == "weight":
        return rule.combiners[mode](terms, rank)  # weight mode's linear rule is exactly sum c_i t_i, kept compact
    return rule.mergers[mode](terms, rank, merge.task_merge())


def combine(terms: Terms, mode: str = "parameter", rank: int | None = None, head: str = "average",
            pool: dict[str, Adapter] | None = None, name: str = "composed", merge: MergeSpec = MergeSpec()) -> Adapter:
    """The composed adapter of ``sum coef_i * adapter_i`` (terms already validated as compatible),
    by the method's linear rule or, with ``merge``, a merge of the operands' task vectors."""
    if not terms:
        raise PeftlabError("nothing to compose: the expression names no adapter")
    if rank is not None and rank < 1:
        raise PeftlabError(f"--rank must be at least 1 (got {rank})")
    tensors, updates = _module_tensors(terms, mode, rank, merge.checked())
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
    rule, heads = composition_of(a), head_tensors(a)
    t = {k: (v.clone() if k in heads else torch.full_like(v, rule.identity) if k.endswith(rule.module_suffixes)
             else torch.zeros_like(v)) for k, v in a.tensors.items()}
    return a.with_tensors(t)
