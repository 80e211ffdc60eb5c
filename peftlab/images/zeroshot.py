"""Zero-shot classification maths for dual encoders, as pure functions of embeddings.

Following open_clip's ``build_zero_shot_classifier``: each class's prompts are encoded, each
embedding L2-normalised, averaged over the prompts (the template ensemble), and normalised
again. Logits are ``logit_scale * normalise(image) @ classifier.T``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from peftlab.results.metrics import classification_metrics


def normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def ensemble(text_emb: torch.Tensor) -> torch.Tensor:
    """(classes, prompts, d) raw text embeddings -> (classes, d): mean of normalised, renormalised."""
    return normalise(normalise(text_emb).mean(dim=1))


def zero_shot_logits(image_emb: torch.Tensor, classifier: torch.Tensor, scale: float) -> torch.Tensor:
    """(n, d) raw image embeddings x (classes, d) unit class embeddings -> (n, classes)."""
    return scale * normalise(image_emb) @ classifier.T


def class_prompts(label_names: list[str], templates: list[str], overrides: dict[str, list[str]]) -> list[list[str]]:
    """The prompts of each class: its override (templates with ``{}`` or literal prompts), else all templates.

    Underscores in label names become spaces in the prompt (food101's ``apple_pie``: "a photo of
    apple pie"); overrides are keyed by the label name as it is.
    """
    return [[t.format(spoken(c)) if "{}" in t else t for t in overrides.get(c, templates)] for c in label_names]


def spoken(label: str) -> str:
    return label.replace("_", " ")


def template_search(
    image_emb: torch.Tensor, labels: np.ndarray, label_names: list[str], classifier: torch.Tensor,
    scale: float, target: str, candidates: list[str], encode: Callable[[list[str]], torch.Tensor],
) -> dict[str, Any]:
    """Try each candidate template as ``target``'s only prompt; keep the best by macro-F1.

    Run on the *training* images, so choosing a template never looks at the eval set. Returns
    the chosen template (None when none beats the current prompts) and its class embedding.
    """
    i = label_names.index(target)
    base = classification_metrics(labels, zero_shot_logits(image_emb, classifier, scale).argmax(-1).numpy(), label_names)
    best: dict[str, Any] = {"template": None, "macro_f1": base["macro_f1"], "embedding": classifier[i]}
    for t in candidates:
        row = normalise(encode([t.format(spoken(target))])[0])
        trial = classifier.clone()
        trial[i] = row
        pred = zero_shot_logits(image_emb, trial, scale).argmax(-1).numpy()
        m = classification_metrics(labels, pred, label_names)
        if m["macro_f1"] > best["macro_f1"] + 1e-12:
            best = {"template": t, "macro_f1": m["macro_f1"], "embedding": row}
    return best


#: candidates for the template search when the config gives none (CLIP paper's ImageNet style)
DEFAULT_SEARCH_TEMPLATES = [
    "a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a bad photo of a {}.",
    "a photo of a small {}.", "a photo of a large {}.", "a cropped photo of a {}.", "a good photo of a {}.",
    "a black and white photo of a {}.", "a low resolution photo of a {}.", "itap of a {}.", "art of the {}.",
]
