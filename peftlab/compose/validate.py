"""Refuse compositions that have no meaning, each with one line naming the two operands.

Checked before any arithmetic: supported method and options, one method for all operands, one
base model, the same adapted modules (and, for parameter-space LoRA, the same rank and alpha).
"""

from __future__ import annotations

from peftlab.compose.adapter import Adapter, lora_modules, module_keys, same_base
from peftlab.errors import PeftlabError
from peftlab.fingerprint import BASE_KEYS

#: LoRA options composition does not model (the update is no longer s * B A)
_LORA_UNSUPPORTED = {"use_dora": "DoRA", "lora_bias": "lora_bias", "use_qalora": "QA-LoRA"}


def check_options(ad: Adapter) -> None:
    if ad.config.get("bias", "none") != "none":
        raise PeftlabError(f"adapter {ad.name}: bias={ad.config['bias']!r} is not supported by compose (needs bias='none')")
    if ad.peft_type != "LORA":
        return
    for key, what in _LORA_UNSUPPORTED.items():
        if ad.config.get(key):
            raise PeftlabError(f"adapter {ad.name}: {what} adapters are not supported by compose")
    if ad.config.get("rank_pattern") or ad.config.get("alpha_pattern"):
        raise PeftlabError(f"adapter {ad.name}: per-module rank_pattern/alpha_pattern is not supported by compose")
    for prefix, (a, b) in lora_modules(ad).items():
        if a.ndim != 2 or b.ndim != 2:
            raise PeftlabError(f"adapter {ad.name}: {prefix} is not a linear layer; compose handles linear LoRA only")


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
    if ka != kb or a.config.get("feedforward_modules") != b.config.get("feedforward_modules"):
        diff = sorted(ka ^ kb)
        first = f" (e.g. {diff[0]})" if diff else " (feedforward_modules differ)"
        raise PeftlabError(f"different target modules: {a.name} and {b.name} adapt different layers{first}")
    shapes = {k: tuple(v.shape) for k, v in a.tensors.items() if k in ka}
    if a.peft_type == "LORA" and mode == "parameter":
        if (a.config["r"], a.config["lora_alpha"]) != (b.config["r"], b.config["lora_alpha"]):
            raise PeftlabError(
                f"parameter-space LoRA needs equal rank and alpha: {a.name} has r={a.config['r']} alpha={a.config['lora_alpha']}, "
                f"{b.name} has r={b.config['r']} alpha={b.config['lora_alpha']}; use --mode weight"
            )
    if a.peft_type != "LORA" or mode == "parameter":
        bad = [k for k in ka if tuple(b.tensors[k].shape) != shapes[k]]
        if bad:
            raise PeftlabError(f"shape mismatch between {a.name} and {b.name} at {bad[0]}")
    else:  # weight mode: the factors may differ in rank, the updates must have one shape
        for prefix, (a_a, a_b) in lora_modules(a).items():
            b_a, b_b = lora_modules(b)[prefix]
            if (a_b.shape[0], a_a.shape[1]) != (b_b.shape[0], b_a.shape[1]):
                raise PeftlabError(f"shape mismatch between {a.name} and {b.name} at {prefix}")


def check_compatible(adapters: list[Adapter], mode: str, force_base: bool = False) -> None:
    """Every operand is supported and compatible with the first."""
    if mode not in ("parameter", "weight"):
        raise PeftlabError(f"--mode {mode!r}: expected parameter or weight")
    for ad in adapters:
        check_options(ad)
    for other in adapters[1:]:
        check_pair(adapters[0], other, mode, force_base)
