"""Saved adapters as data: peft's ``adapter_config.json`` + ``adapter_model.safetensors``.

An :class:`Adapter` is what composition works on: the peft config, the saved tensors (peft's
key names, e.g. ``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight``)
and a fingerprint of what it was trained on. Accepted paths: a peftlab run's method folder
(``RUN_DIR/METHOD``), its ``adapter`` folder, or any plain peft adapter folder. Read and written
with safetensors only (never pickle).

The fingerprint (``meta``) comes from the peftlab run around the adapter (``results.json``:
method, backbone, labels) or from the ``peftlab_compose.json`` a composed adapter carries; a plain
peft folder has only ``base_model_name_or_path`` and ``revision`` (an offline alias's hub id there
is read back as the alias: its packaged copy, :func:`peftlab.backbones.loaders.alias_of`). ``base_fp`` is peftlab's
fingerprint of the base weights (``base_fingerprint.json``, :mod:`peftlab.infra.fingerprint`), which
every adapter peftlab saves carries, composed ones included, so that none is put on another base.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from peftlab.backbones.loaders import alias_of
from peftlab.infra.errors import PeftlabError
from peftlab.infra.fingerprint import FINGERPRINT_FILE, write_fingerprint
from peftlab.infra.io import read_json, save_safetensors
from peftlab.methods import METHODS
from peftlab.methods.base import Composition, Method, read_safetensors
from peftlab.results import read_result

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
COMPOSE_FILE = "peftlab_compose.json"


def _composers() -> dict[str, Method]:
    """peft type -> the method whose ``composition`` rule its adapters follow (every method that
    declares one); the first registered wins: qlora's adapters are LoRA adapters, lora's rule."""
    out: dict[str, Method] = {}
    for m in METHODS.in_order():
        if m.composition is not None:
            out.setdefault(getattr(m, "peft_type"), m)  # composable methods are peft methods
    return out


COMPOSERS = _composers()
#: peft types composition understands, and the peftlab method each corresponds to
SUPPORTED = {peft_type: m.name for peft_type, m in COMPOSERS.items()}
#: key endings of the adapted modules' tensors, every composable method's (the rest is the head)
MODULE_SUFFIXES = tuple(s for m in COMPOSERS.values() if m.composition for s in m.composition.module_suffixes)


@dataclass(frozen=True)
class Adapter:
    """One saved module: peft config, tensors by peft key, and what it was trained on."""

    name: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    #: method (peftlab name), backbone (as the run named it), revision, labels, base_model
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: peftlab's fingerprint of the base model (None: a plain peft folder, not made by peftlab)
    base_fp: dict[str, str] | None = None

    @property
    def method(self) -> str:
        return str(self.meta.get("method") or SUPPORTED.get(self.peft_type, self.peft_type.lower()))

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "?"))

    def with_tensors(self, tensors: dict[str, torch.Tensor], **config: Any) -> "Adapter":
        return replace(self, tensors=tensors, config={**self.config, **config})


def composition_of(ad: Adapter) -> Composition:
    """The composition rule of ``ad``'s method (its peft type is one :data:`SUPPORTED` names)."""
    composition = COMPOSERS[ad.peft_type].composition
    assert composition is not None  # COMPOSERS holds composable methods only
    return composition


def module_keys(ad: Adapter) -> set[str]:
    """The adapted modules (what must match between operands), without head tensors."""
    return {k for k in ad.tensors if not is_head_key(ad, k)}


def is_head_key(ad: Adapter, key: str) -> bool:
    """A tensor of a ``modules_to_save`` module (the classification head peft trains alongside)."""
    if key.endswith(MODULE_SUFFIXES):
        return False
    parts = key.split(".")
    saved = set(ad.config.get("modules_to_save") or [])
    return any(".".join(parts[i:j]) in saved for i in range(len(parts)) for j in range(i + 1, len(parts)))


def head_tensors(ad: Adapter) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ad.tensors.items() if is_head_key(ad, k)}


def _adapter_dir(path: Path) -> Path:
    """RUN_DIR/METHOD -> RUN_DIR/METHOD/adapter; an adapter folder is returned as it is."""
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / "adapter" / CONFIG_FILE).is_file():
        return path / "adapter"
    if not path.exists():
        raise PeftlabError(f"adapter {path}: no such folder")
    raise PeftlabError(f"adapter {path}: no {CONFIG_FILE} (expected a peft adapter folder or a peftlab RUN_DIR/METHOD)")


def _run_meta(adir: Path) -> dict[str, Any]:
    """Fingerprint from the peftlab run around ``adir``, or from a composed adapter's record."""
    if (adir / COMPOSE_FILE).is_file():
        return dict(_read_json(adir / COMPOSE_FILE).get("fingerprint", {}))
    mdir = adir.parent
    if not (mdir / "results.json").is_file():
        return {}

    r = read_result(mdir / "results.json")
    meta: dict[str, Any] = {"method": r.method, "backbone": r.backbone, "labels": list(r.labels)}
    cfg_path = mdir.parent / "config.yaml"
    if cfg_path.is_file():
        backbone = (yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}).get("backbone")
        if isinstance(backbone, dict):
            meta["revision"] = backbone.get("revision")
    return meta


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise PeftlabError(f"{path}: not a JSON object")
    return data


def load_adapter(name: str, path: str | Path) -> Adapter:
    """Read an adapter (config + safetensors + fingerprint); refuse what composition cannot handle."""
    adir = _adapter_dir(Path(path))
    config = _read_json(adir / CONFIG_FILE)
    if config.get("peft_type") not in SUPPORTED:
        raise PeftlabError(
            f"adapter {name} ({adir}): compose supports {' and '.join(SUPPORTED.values())} adapters, "
            f"this one is {config.get('peft_type')}"
        )
    tensors = read_safetensors(adir / WEIGHTS_FILE, f"adapter weights ({WEIGHTS_FILE})")
    meta = _run_meta(adir)
    recorded = config.get("base_model_name_or_path")  # an alias's hub id: that alias, its packaged copy
    meta.setdefault("base_model", alias_of(recorded) if isinstance(recorded, str) else recorded)
    base_fp = _read_json(adir / FINGERPRINT_FILE) if (adir / FINGERPRINT_FILE).is_file() else None
    return Adapter(name=name, config=config, tensors=tensors, meta=meta, source=str(adir), base_fp=base_fp)


def save_adapter(ad: Adapter, out: str | Path, record: dict[str, Any] | None = None) -> Path:
    """Write a plain peft adapter folder (loadable by ``PeftModel.from_pretrained``) plus our record."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_safetensors({k: v.contiguous() for k, v in ad.tensors.items()}, out / WEIGHTS_FILE, metadata={"format": "pt"})
        (out / CONFIG_FILE).write_text(json.dumps(ad.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        body = {**(record or {}), "fingerprint": ad.meta}
        (out / COMPOSE_FILE).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        if ad.base_fp is not None:
            write_fingerprint(out, ad.base_fp)
    except OSError as exc:
        raise PeftlabError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return out


def same_base(a: str | None, b: str | None) -> bool:
    """Base model names agree (local paths compared after resolving links)."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    if os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return False
