"""Put a composed adapter on its base model: evaluate it, or merge it and save the weights.

The base comes from the adapter's fingerprint (the peftlab run's backbone, so offline aliases
work) or its ``base_model_name_or_path``, unless the user names one; the label names come from
the run, or ``LABEL_i`` sized by the saved head. An adapter is only put on the base its
``base_fingerprint.json`` names (other weights or architecture: refused unless ``force_base``),
and a merged model records the fingerprint of the base it was merged into.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from peftlab.backbones.loaders import load_classifier, load_tokenizer
from peftlab.compose.adapter import COMPOSE_FILE, Adapter, head_tensors
from peftlab.config import BackboneConfig
from peftlab.infra.errors import PeftlabError
from peftlab.infra.fingerprint import base_fingerprint, check_base, write_fingerprint
from peftlab.infra.io import follow_umask
from peftlab.methods.peft_common import load_peft
from peftlab.results.metrics import classification_metrics
from peftlab.runners.batching import encode
from peftlab.runners.train import cross_entropy, predict_logits
from peftlab.tasks.base import Split


def backbone_of(ad: Adapter, base: str | None = None) -> BackboneConfig:
    name = base or ad.meta.get("backbone") or ad.meta.get("base_model")
    if not name:
        raise PeftlabError(f"adapter {ad.name} does not name its base model; pass --base")
    return BackboneConfig(name=str(name), revision=ad.meta.get("revision"))


def labels_of(ad: Adapter) -> list[str]:
    if ad.meta.get("labels"):
        return list(ad.meta["labels"])
    mats = [v for k, v in head_tensors(ad).items() if k.endswith(".weight") and v.ndim == 2]
    if not mats:
        raise PeftlabError(f"adapter {ad.name}: no saved head and no label names; cannot build a classifier")
    return [f"LABEL_{i}" for i in range(min(int(m.shape[0]) for m in mats))]


def base_fingerprint_of(ad: Adapter, base: str | None = None) -> dict[str, str]:
    """Fingerprint of the base model ``ad`` goes on (for adapters made outside peftlab, which carry none)."""
    backbone = backbone_of(ad, base)
    return _fingerprint_of(backbone.name, backbone.revision, tuple(labels_of(ad)))


@lru_cache(maxsize=8)
def _fingerprint_of(name: str, revision: str | None, labels: tuple[str, ...]) -> dict[str, str]:
    backbone = BackboneConfig(name=name, revision=revision)
    return base_fingerprint(load_classifier(backbone, list(labels), load_tokenizer(backbone)), name)


def _checked_base(adapter_dir: Path, ad: Adapter, base: str | None, tok: Any,
                  force_base: bool) -> tuple[Any, Any, dict[str, str]]:
    """(fresh base classifier, tokenizer, its fingerprint), refused if ``adapter_dir`` was made for another base."""
    backbone = backbone_of(ad, base)
    tok = tok if tok is not None else load_tokenizer(backbone)
    model = load_classifier(backbone, labels_of(ad), tok)
    fingerprint = base_fingerprint(model, backbone.name)
    check_base(adapter_dir, fingerprint, force_base)
    return model, tok, fingerprint


def load_with_adapter(adapter_dir: Path, ad: Adapter, base: str | None = None, tok: Any = None,
                      force_base: bool = False) -> tuple[Any, Any]:
    """(PeftModel in eval mode, tokenizer) for the adapter saved at ``adapter_dir``."""
    model, tok, _ = _checked_base(adapter_dir, ad, base, tok, force_base)
    model = load_peft(model, adapter_dir)
    model.eval()
    return model, tok


def merge_to(adapter_dir: Path, ad: Adapter, out: Path, base: str | None = None, force_base: bool = False) -> Path:
    """Merge into the base weights (peft ``merge_and_unload``) and save model + tokenizer (safetensors)."""
    model, tok, fingerprint = _checked_base(adapter_dir, ad, base, None, force_base)
    merged = load_peft(model, adapter_dir).merge_and_unload()
    try:
        merged.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        follow_umask(*out.glob("*.safetensors"))  # written 0600 by safetensors >= 0.8
        write_fingerprint(out, fingerprint)  # what it was merged into
        if (adapter_dir / COMPOSE_FILE).is_file():
            shutil.copyfile(adapter_dir / COMPOSE_FILE, out / COMPOSE_FILE)  # a new file: the umask's mode
    except OSError as exc:
        raise PeftlabError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return out


def evaluate(model: Any, tok: Any, split: Split, labels: list[str], max_length: int, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report, confusion matrix and loss on ``split``."""
    feats = encode(tok, split, max_length)
    logits = predict_logits(model, feats, DataCollatorWithPadding(tok), batch_size, torch.device("cpu"))
    m = classification_metrics(split.labels, logits.argmax(-1), labels)
    m["eval_loss"] = cross_entropy(logits.astype(np.float32), split.labels)
    return m
