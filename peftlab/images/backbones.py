"""Image backbones: classifiers (EfficientNet-Lite0 offline, any AutoModelForImageClassification)
and CLIP-style dual encoders (transformers ``CLIPModel``; open_clip as an optional extra).

Which kind a backbone is comes from its name and config alone (no weights), so a config that
pairs e.g. ``coop`` with a CNN is refused before anything loads. Each kind is a small adapter
with one interface, so methods and runners never ask which library is underneath.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftlab.backbones.loaders import _fail, _kwargs, load_hf_config, loading_weights, resolve
from peftlab.config import BackboneConfig
from peftlab.infra.errors import PeftlabError
from peftlab.images import clip_prefix, efficientnet
from peftlab.images.preprocess import CLIP_MEAN, CLIP_STD, Preprocess, from_model_folder
from peftlab.infra.registry import Registry

OPEN_CLIP_PREFIX = "open_clip:"
HEAD_NAMES = ("classifier", "score", "head", "fc")
#: LoRA targets when the config names none: attention query/value for ViTs (as peft does for
#: text), the 1x1 expand/project convs for EfficientNet-Lite (the depthwise convs are tiny)
#: (transformers 5 names ViT's projections q_proj/k_proj/v_proj/o_proj)
DEFAULT_LORA_TARGETS = {"vit": ["q_proj", "v_proj"], "efficientnet-lite": ["expand.conv", "project.conv"]}


@dataclass
class ClassifierBackbone:
    """A CNN/ViT with a classification head; ``load`` builds a fresh model for each method."""

    name: str
    family: str  # "efficientnet-lite" or the transformers model_type
    preprocess: Preprocess
    load: Callable[[list[str], int], nn.Module]
    arch: Any  # LiteConfig or the transformers config (for closed-form counts)
    kind: str = "classifier"

    def head_name(self, model: nn.Module) -> str:
        for n in HEAD_NAMES:
            if isinstance(getattr(model, n, None), nn.Module):
                return n
        raise PeftlabError(f"backbone {self.name!r}: no classification head (looked for {', '.join(HEAD_NAMES)})")

    def default_targets(self) -> list[str]:
        if self.family not in DEFAULT_LORA_TARGETS:
            raise PeftlabError(f"lora: no default target_modules for image backbone {self.family!r}; set target_modules")
        return list(DEFAULT_LORA_TARGETS[self.family])


def logits_of(out: Any) -> torch.Tensor:
    """Our CNN returns logits; transformers models return an output object carrying them."""
    return out if isinstance(out, torch.Tensor) else out.logits


@dataclass
class ClipBackbone:
    """A frozen dual encoder: text and image embeddings in one space, plus its logit scale."""

    name: str
    model: nn.Module
    preprocess: Preprocess
    tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]  # -> ids, attention mask
    encode_text: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    token_embedding: nn.Embedding | None  # CoOp substitutes its context vectors at this module's output
    logit_scale: float
    kind: str = "clip"
    # (prefix (P, d) embeddings, ids (C, L)) -> (C, D): the text tower with the shared first P
    # positions computed once (clip_prefix.py); None where the tower's layout is not handled
    encode_text_shared_prefix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


IMAGE_ALIASES: Registry[Callable[[BackboneConfig], Any]] = Registry("image backbone alias")


@IMAGE_ALIASES.register("efficientnet-lite0")
def _lite0(cfg: BackboneConfig) -> ClassifierBackbone:
    state: dict[str, torch.Tensor] = {}

    def load(labels: list[str], seed: int) -> nn.Module:
        if not state:
            state.update(efficientnet.cached_weights())
        return efficientnet.load_lite(len(labels), state, seed=seed)

    return ClassifierBackbone(name=cfg.name, family="efficientnet-lite",
                              preprocess=Preprocess(224, efficientnet.MEAN, efficientnet.STD, 256),
                              load=load, arch=efficientnet.LiteConfig())


def backbone_kind(cfg: BackboneConfig) -> str:
    """"clip" or "classifier", from the name and config only (no weights are read)."""
    if cfg.name.startswith(OPEN_CLIP_PREFIX):
        return "clip"
    if cfg.name in IMAGE_ALIASES:
        return "classifier"
    return "clip" if load_hf_config(cfg).model_type == "clip" else "classifier"


def load_image_backbone(cfg: BackboneConfig) -> ClassifierBackbone | ClipBackbone:
    if cfg.name.startswith(OPEN_CLIP_PREFIX):
        return _open_clip(cfg)
    if cfg.name in IMAGE_ALIASES:
        return IMAGE_ALIASES.get(cfg.name)(cfg)
    conf = load_hf_config(cfg)
    return _hf_clip(cfg) if conf.model_type == "clip" else _hf_classifier(cfg, conf)


def _hf_classifier(cfg: BackboneConfig, conf: Any) -> ClassifierBackbone:
    from transformers import AutoModelForImageClassification

    path = resolve(cfg.name)

    def load(labels: list[str], seed: int) -> nn.Module:
        torch.manual_seed(seed)  # the new head's initialisation
        with loading_weights(cfg, quiet=True):
            return AutoModelForImageClassification.from_pretrained(
                path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True,
                dtype=torch.float32, **_kwargs(cfg))

    default = Preprocess(getattr(conf, "image_size", 224) or 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return ClassifierBackbone(name=cfg.name, family=conf.model_type, preprocess=from_model_folder(path, default),
                              load=load, arch=conf)


def _hf_clip(cfg: BackboneConfig) -> ClipBackbone:
    from transformers import AutoTokenizer, CLIPModel

    path = resolve(cfg.name)
    with loading_weights(cfg):
        model = CLIPModel.from_pretrained(path, dtype=torch.float32, **_kwargs(cfg)).eval()
        tok = AutoTokenizer.from_pretrained(path, **_kwargs(cfg))
    for p in model.parameters():
        p.requires_grad_(False)
    max_len = model.config.text_config.max_position_embeddings

    def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def encode_text(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output

    def encode_image(pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixels).pooler_output

    def encode_text_shared_prefix(prefix: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return clip_prefix.encode_shared_prefix(model.text_model, model.text_projection, prefix, ids)

    size = model.config.vision_config.image_size
    return ClipBackbone(
        name=cfg.name, model=model, preprocess=from_model_folder(path, Preprocess(size, CLIP_MEAN, CLIP_STD)),
        tokenize=tokenize, encode_text=encode_text, encode_image=encode_image,
        token_embedding=model.text_model.embeddings.token_embedding, logit_scale=float(model.logit_scale.exp()),
        encode_text_shared_prefix=(encode_text_shared_prefix if clip_prefix.supports_shared_prefix(model.text_model)
                                   else None),
    )


def _open_clip(cfg: BackboneConfig) -> ClipBackbone:
    """``open_clip:ARCH[:PRETRAINED_TAG]``, e.g. ``open_clip:convnext_base_w:laion2b_s13b_b82k``.

    open_clip needs torchvision, whose CPU wheel breaks transformers on machines like the one
    peftlab is tested on: this path is not exercised by the test suite.
    """
    try:
        import open_clip  # type: ignore[import-not-found]
    except ImportError as exc:
        raise PeftlabError(f"backbone {cfg.name!r} needs the optional extra: pip install 'peftlab[open_clip]' ({exc})") from None
    arch, _, tag = cfg.name[len(OPEN_CLIP_PREFIX):].partition(":")
    try:
        model = open_clip.create_model(arch, pretrained=tag or None).eval()
        tok = open_clip.get_tokenizer(arch)
    except Exception as exc:  # unknown arch/tag, download failure
        raise _fail(cfg, exc) from None
    for p in model.parameters():
        p.requires_grad_(False)
    pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pcfg.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size

    def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tok(texts)
        return ids, (ids != 0).long()

    return ClipBackbone(
        name=cfg.name, model=model,
        preprocess=Preprocess(int(size), tuple(pcfg.get("mean", CLIP_MEAN)), tuple(pcfg.get("std", CLIP_STD))),
        tokenize=tokenize, encode_text=lambda ids, mask: model.encode_text(ids),
        encode_image=model.encode_image,
        # CLIP keeps it on the model; CustomTextCLIP (e.g. hf text towers) on model.text
        token_embedding=getattr(model, "token_embedding", None) or getattr(getattr(model, "text", None), "token_embedding", None),
        logit_scale=float(model.logit_scale.exp()),
    )
