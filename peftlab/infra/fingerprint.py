"""Which base model an adapter was trained on, so it is never silently applied to another.

peft only warns about missing keys, and an adapter whose shapes happen to fit a different base
loads without a word and gives nonsense. Every saved adapter therefore records a fingerprint of
its base: the name or path it was loaded from, a hash of its architecture config (label and
bookkeeping fields left out, since a new head is expected), and a hash of its input embedding
matrix (real weights: two random initialisations, or two checkpoints of one architecture, differ
there). Loading compares the architecture and weight hashes; the name may differ (a moved folder).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftlab.infra.errors import PeftlabError

FINGERPRINT_FILE = "base_fingerprint.json"
#: what must agree between an adapter's recorded base and the base it is put on (the name may differ)
BASE_KEYS = ("config_sha256", "embedding_sha256")
#: config fields that change with the task or the tooling, not with the base model's identity
IGNORED_CONFIG_KEYS = frozenset({
    "id2label", "label2id", "num_labels", "problem_type", "_name_or_path", "transformers_version",
    "architectures", "torch_dtype", "dtype", "quantization_config", "finetuning_task", "pad_token_id",
    "use_cache", "output_hidden_states", "output_attentions", "return_dict",
})
#: rows of the embedding matrix hashed: enough to tell weights apart, cheap for any vocabulary
ROWS = 2048


def config_hash(config: Any) -> str:
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    data = {k: v for k, v in raw.items() if k not in IGNORED_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def embedding_hash(model: nn.Module) -> str:
    """The input embedding matrix (text models), else the first weight (a CNN's stem, a ViT's patches)."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if get is not None else None
    except (NotImplementedError, AttributeError):
        emb = None
    weight = getattr(emb, "weight", None)  # a ViT's "input embeddings" are a patch module, no matrix
    tensor = weight if isinstance(weight, torch.Tensor) else next(p for p in model.parameters() if p.ndim >= 2)
    weight = tensor.detach()[:ROWS].to("cpu", torch.float32).contiguous()
    return hashlib.sha256(weight.numpy().tobytes()).hexdigest()


def base_fingerprint(model: nn.Module, name: str, config: Any = None) -> dict[str, str]:
    """The fingerprint of a freshly loaded base model (before any method touches it).

    ``config``: the architecture description when the model has no HF ``config`` (our CNNs).
    """
    conf = config if config is not None else model.config
    return {"base": name, "config_sha256": config_hash(conf), "embedding_sha256": embedding_hash(model)}


def write_fingerprint(directory: Path, fingerprint: dict[str, str]) -> None:
    (directory / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")


def check_base(adapter_dir: Path, fingerprint: dict[str, str], force: bool = False) -> None:
    """Refuse an adapter recorded for another base; ``force`` lets an expert override."""
    path = adapter_dir / FINGERPRINT_FILE
    if not path.is_file():
        if force:
            return
        raise PeftlabError(f"{adapter_dir}: no {FINGERPRINT_FILE}, so its base model cannot be checked "
                           "(pass --force-base to load it anyway)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PeftlabError(f"{path}: unreadable ({exc})") from None
    differs = [k for k in BASE_KEYS if saved.get(k) != fingerprint[k]]
    if differs and not force:  # the name may differ (a moved folder); architecture and weights may not
        what = "architecture" if "config_sha256" in differs else "weights"
        raise PeftlabError(f"{adapter_dir} was trained on base {saved.get('base')!r}, not on {fingerprint['base']!r} "
                           f"(different {what}); pass --force-base to load it anyway")


def image_base_fingerprint(backbone: Any, labels: list[str], seed: int) -> dict[str, str]:
    """The same for an image backbone: CLIP's frozen model, or a classifier built fresh (head aside)."""
    model = backbone.model if getattr(backbone, "model", None) is not None else backbone.load(labels, seed)
    conf = getattr(model, "config", None) or backbone.arch
    return base_fingerprint(model, backbone.name, conf)
