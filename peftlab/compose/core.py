"""From an expression and named adapters to one composed adapter (the library entry point)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from peftlab.compose.adapter import Adapter, load_adapter, save_adapter
from peftlab.compose.expr import linear_form, weighted_terms
from peftlab.compose.merge import MergeSpec
from peftlab.compose.ops import combine
from peftlab.compose.validate import check_compatible
from peftlab.infra.errors import PeftlabError
from peftlab.compose.model import base_fingerprint_of


def parse_adapter_args(items: list[str]) -> dict[str, str]:
    """``name=PATH`` pairs (the ``--adapters`` option) -> {name: path}; names are identifiers."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise PeftlabError(f"--adapters {item!r}: expected NAME=PATH")
        if not name.isidentifier():
            raise PeftlabError(f"--adapters {item!r}: the name must be letters, digits and _ (not starting with a digit)")
        if name in out:
            raise PeftlabError(f"--adapters: name {name!r} given twice")
        out[name] = path
    return out


def load_pool(paths: dict[str, str]) -> dict[str, Adapter]:
    return {name: load_adapter(name, path) for name, path in paths.items()}


def compose(text: str, pool: dict[str, Adapter], mode: str = "parameter", rank: int | None = None,
            head: str = "average", variables: dict[str, float] | None = None, base: str | None = None,
            force_base: bool = False, merge: MergeSpec = MergeSpec()) -> tuple[Adapter, dict[str, Any]]:
    """(composed adapter, a record of how it was made) for ``text`` over the adapters in ``pool``.

    With a non-linear ``merge`` (TIES, DARE, ...) the expression must be a weighted sum naming each
    adapter once: its terms are the task vectors, their coefficients the weights.
    The composed adapter carries its operands' base fingerprint; operands made outside peftlab
    carry none, and then it is taken from the base they name (or ``base``), loaded once.
    """
    merge = merge.checked()
    if merge.is_linear:
        coefs = linear_form(text, list(pool), variables)
    else:
        coefs = weighted_terms(text, list(pool), variables, f"--combine {merge.combine}")
    terms = [(c, pool[n]) for n, c in coefs.items()]
    check_compatible([ad for _, ad in terms], mode, force_base)
    composed = combine(terms, mode, rank, head, pool, merge=merge)
    if composed.base_fp is None:
        composed = replace(composed, base_fp=base_fingerprint_of(composed, base))
    record = {
        "expression": text, "variables": dict(variables or {}), "coefficients": coefs, "mode": mode,
        "rank": rank, **merge.record(), "head": head, "sources": {n: pool[n].source for n in coefs},
    }
    return composed, record


def write(composed: Adapter, record: dict[str, Any], out: str | Path) -> Path:
    return save_adapter(composed, out, record)
