"""Refuse compositions that have no meaning, each with one line naming the two operands.

Checked before any arithmetic: supported method and options, one method for all operands, one
base model, the same adapted modules, and what the method's own rule needs (``Composition``:
parameter-space LoRA, the same rank and alpha).
"""

from __future__ import annotations

from peftlab.compose.adapter import Adapter, composition_of, module_keys, same_base
from peftlab.infra.errors import PeftlabError
from peftlab.infra.fingerprint import BASE_KEYS


def check_options(ad: Adapter) -> None:
    if ad.config.get("bias", "none") != "none":
        raise PeftlabError(f"adapter {ad.name}: bias={ad.config['bias']!r} is not supported by compose (needs bias='none')")
    own = composition_of(ad).check_options
    if own is not None:
        own(ad)


def _base_of(ad: Adapter) -> str:
    return str(ad.meta.get("backbone") or ad.meta.get("base_model"))


def _same_base(a: Adapter, b: Adapter) -> bool:
    """peftlab runs name their backbone (an alias works on any machine); else peft's base path/id."""
    if a.meta.get("backbone") and b.meta.get("backbone"):
        return a.meta["backbone"] == b.meta["backbone"]
    return same_base(a.meta.get("base_model"), b.meta.get("base_model"))


def _check_base(a: Adapter, b: Adapter, force_base: bool) -> None:
    """One base for both: by peftlab's fingerprints of the base weights when both carry one (the
    names may differ: a moved folder), else by name. ``force_base`` overrides a fingerprint mismatch."""
    if a.base_fp is not None and b.base_fp is not None:
        if not force_base and any(a.base_fp.get(k) != b.base_fp.get(k) for k in BASE_KEYS):
            raise PeftlabError(f"different base models: {a.name} and {b.name} were trained on bases with different "
                               "weights or architecture (base_fingerprint.json); pass --force-base to compose them anyway")
    elif not _same_base(a, b):
        raise PeftlabError(f"different base models: {a.name} was trained on {_base_of(a)}, {b.name} on {_base_of(b)}")


def check_pair(a: Adapter, b: Adapter, mode: str, force_base: bool = False) -> None:
    """``b`` can be composed with ``a``; else one PeftlabError line naming both."""
    if a.method != b.method:
        raise PeftlabError(f"cannot compose different methods: {a.name} is {a.method}, {b.name} is {b.method}")
    _check_base(a, b, force_base)
    if a.meta.get("revision") != b.meta.get("revision") or a.config.get("revision") != b.config.get("revision"):
        raise PeftlabError(f"different base model revisions: {a.name} and {b.name}")
    ka, kb = module_keys(a), module_keys(b)
    if ka != kb:
        raise PeftlabError(f"different target modules: {a.name} and {b.name} adapt different layers "
                           f"(e.g. {sorted(ka ^ kb)[0]})")
    rule = composition_of(a)
    if rule.check_pair is not None:
        rule.check_pair(a, b, mode)
    bad = [k for k, shape in _shapes(a, ka, mode).items() if _shapes(b, kb, mode)[k] != shape]
    if bad:
        raise PeftlabError(f"shape mismatch between {a.name} and {b.name} at {bad[0]}")


def _shapes(ad: Adapter, keys: set[str], mode: str) -> dict[str, tuple[int, ...]]:
    """What must agree between operands: each module tensor's shape, or in weight mode what the
    method's rule names (LoRA: each update's, whatever the ranks)."""
    own = composition_of(ad).weight_shapes
    if mode == "weight" and own is not None:
        return own(ad)
    return {k: tuple(ad.tensors[k].shape) for k in keys}


def check_compatible(adapters: list[Adapter], mode: str, force_base: bool = False) -> None:
    """Every operand is supported and compatible with the first."""
    if mode not in ("parameter", "weight"):
        raise PeftlabError(f"--mode {mode!r}: expected parameter or weight")
    for ad in adapters:
        check_options(ad)
    for other in adapters[1:]:
        check_pair(adapters[0], other, mode, force_base)
