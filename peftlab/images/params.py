"""Closed-form parameter counts for the image methods, pure functions of the architecture.

As in peftlab.estimate.params for text: every result stores the counted number next to these, so a
method that trains more or less than it claims is flagged (``params_mismatch``).
"""

from __future__ import annotations

from typing import Any

from peftlab.images.efficientnet import LiteConfig
from peftlab.estimate.params import linear_params, matches_target

#: conv name -> (in channels, out channels, kernel, groups)
Convs = dict[str, tuple[int, int, int, int]]


def lite_convs(cfg: LiteConfig) -> Convs:
    """Every conv of EfficientNet-Lite by module name, as :mod:`peftlab.images.efficientnet` names them."""
    out: Convs = {"stem.conv": (3, cfg.stem, 3, 1)}
    for i, (c_in, e, k, _s, c_out) in enumerate(cfg.blocks()):
        mid = c_in * e
        if e != 1:
            out[f"blocks.{i}.expand.conv"] = (c_in, mid, 1, 1)
        out[f"blocks.{i}.depthwise.conv"] = (mid, mid, k, mid)
        out[f"blocks.{i}.project.conv"] = (mid, c_out, 1, 1)
    out["head_conv.conv"] = (cfg.blocks()[-1][-1], cfg.head, 1, 1)
    return out


def lite_head(cfg: LiteConfig, num_labels: int) -> int:
    return linear_params(cfg.head, num_labels, True)


def lite_total(cfg: LiteConfig, num_labels: int) -> int:
    """Convs (no bias) + one batch norm (weight, bias) per conv + the linear head."""
    convs = lite_convs(cfg)
    return sum(o * (i // g) * k * k + 2 * o for i, o, k, g in convs.values()) + lite_head(cfg, num_labels)


def conv_lora_params(convs: Convs, targets: list[str], r: int) -> int:
    """peft's Conv2d LoRA: A is a conv (in -> r, same kernel), B a 1x1 conv (r -> out): r(in k^2 + out).

    Grouped (depthwise) convs are left out: peft refuses or treats them specially; target 1x1 convs.
    """
    return sum(r * (i * k * k + o) for name, (i, o, k, g) in convs.items()
               if g == 1 and any(matches_target(name, t) for t in targets))


def vit_total(c: Any, num_labels: int) -> int:
    """transformers ViTForImageClassification: patch embedding, [CLS], positions, blocks, final norm, head."""
    h, inter, p, size = c.hidden_size, c.intermediate_size, c.patch_size, c.image_size
    patches = (size // p) ** 2
    emb = c.num_channels * p * p * h + h + h + (patches + 1) * h
    layer = (3 * linear_params(h, h, c.qkv_bias) + linear_params(h, h, True) + linear_params(h, inter, True)
             + linear_params(inter, h, True) + 4 * h)
    return emb + c.num_hidden_layers * layer + 2 * h + linear_params(h, num_labels, True)


def vit_linears(c: Any) -> dict[str, tuple[int, int]]:
    """Every linear of the blocks by module name (transformers 5 names: q/k/v/o_proj, mlp.fc1/fc2)."""
    h, inter = c.hidden_size, c.intermediate_size
    out = {}
    for i in range(c.num_hidden_layers):
        pre = f"vit.layers.{i}"
        for n in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"):
            out[f"{pre}.{n}"] = (h, h)
        out[f"{pre}.mlp.fc1"] = (h, inter)
        out[f"{pre}.mlp.fc2"] = (inter, h)
    return out


def vit_lora_params(c: Any, targets: list[str], r: int) -> int:
    return sum(r * (i + o) for name, (i, o) in vit_linears(c).items() if any(matches_target(name, t) for t in targets))


def vit_head(c: Any, num_labels: int) -> int:
    return linear_params(c.hidden_size, num_labels, True)


def coop_params(n_ctx: int, width: int, num_classes: int, class_specific: bool) -> int:
    """CoOp learns n_ctx context vectors of the text width, shared or one set per class."""
    return n_ctx * width * (num_classes if class_specific else 1)


def class_embedding_params(num_classes: int, embed_dim: int) -> int:
    return num_classes * embed_dim


def probe_params(dim: int, num_classes: int) -> int:
    return linear_params(dim, num_classes, True)
