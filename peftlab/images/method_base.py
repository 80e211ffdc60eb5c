"""The image-method interface and the registry of implementations, keyed ``method:kind``.

An image method turns a backbone and the task's pixel tensors into a :class:`Built`: the module
to count, a forward from inputs (pixels or cached features) to logits, and how to save what it
trained. The runner trains every Built with one loop (peftlab.runners.cached.fit_tensors), so a
method is only what differs. ``kind`` is "classifier" (CNN/ViT with a head) or "clip".

Whether a method runs on a kind is not this registry's to say: the method declares it
(``Method.runs_on``, in its module of peftlab.methods), :func:`implement` refuses an
implementation for a kind the method does not declare, and :func:`image_method` refuses a row
from that declaration (``refuse_kind``), the same refusal a text row gets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from peftlab.config import TrainConfig
from peftlab.infra.io import save_safetensors
from peftlab.infra.registry import Registry
from peftlab.infra.distributed import barrier, is_main
from peftlab.tasks.images import ImageTaskData
from peftlab.methods import METHODS
from peftlab.methods.base import read_safetensors, refuse_kind

Forward = Callable[[torch.Tensor], torch.Tensor]
HEAD_FILE = "head.safetensors"


@dataclass
class ImageContext:
    """What every method of one image experiment shares: data, pixels, backbone, feature cache."""

    backbone: Any  # ClassifierBackbone | ClipBackbone
    data: ImageTaskData
    x_train: torch.Tensor  # (N, 3, S, S) preprocessed pixels
    x_eval: torch.Tensor
    tcfg: TrainConfig
    device: torch.device
    cache_dir: Path | None = None
    #: the base model's fingerprint, saved beside every adapter (peftlab.infra.fingerprint)
    fingerprint: dict[str, str] | None = None
    _features: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def features(self, what: str, compute: Callable[[torch.Tensor], torch.Tensor],
                 network: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, eval) features of a frozen ``network``, computed once and cached in memory and on disk.

        The disk key hashes the backbone name, ``what``, a sample of every weight of ``network``
        and the pixel tensors themselves, so an entry is only reused for the same weights and inputs.
        """
        if what in self._features:
            return self._features[what]
        digest = hashlib.sha256(f"{self.backbone.name}|{what}".encode())
        for name, t in network.state_dict().items():
            digest.update(name.encode() + t.detach().flatten()[:64].float().cpu().numpy().tobytes())
        for x in (self.x_train, self.x_eval):
            digest.update(x.numpy().tobytes())
        path = self.cache_dir / f"{what}-{digest.hexdigest()[:20]}.safetensors" if self.cache_dir else None
        cached = path is not None and path.is_file()
        barrier()  # under a launcher: every process has looked before rank 0 may write the file
        if cached:
            t = load_file(str(path))
            pair = (t["train"], t["eval"])
        else:  # every process computes (reads only); rank 0 alone writes the cache, the others wait
            pair = (batched(compute, self.x_train, self.tcfg.eval_batch_size, self.device),
                    batched(compute, self.x_eval, self.tcfg.eval_batch_size, self.device))
            if path is not None and is_main():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name("." + path.name + ".tmp")
                save_safetensors({"train": pair[0].contiguous(), "eval": pair[1].contiguous()}, tmp)
                tmp.replace(path)
            barrier()
        self._features[what] = pair
        return pair


@torch.no_grad()
def batched(fn: Forward, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


@dataclass
class Built:
    model: nn.Module  # everything in play (counted for trainable / total)
    trainable: nn.Module  # what the optimizer sees and train()/eval() toggles
    forward: Forward  # inputs -> logits
    x_train: torch.Tensor
    x_eval: torch.Tensor
    save: Callable[[Path], None]
    trains: bool = True
    train_mode: Callable[[], Any] | None = None
    feature_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class ImageMethod:
    def check(self, params: Any) -> None:
        """Refuse, before any weights load, settings this image method does not implement."""

    def build(self, ctx: ImageContext, params: Any) -> Built:
        raise NotImplementedError

    def derived(self, ctx: ImageContext, params: Any) -> tuple[int | None, int | None]:
        """Closed-form (trainable, total); None where no formula exists for this architecture."""
        return None, None

    def predictor(self, backbone: Any, params: Any, labels: list[str], directory: Path, seed: int) -> Forward:
        """Pixels -> logits of the trained method, rebuilt from a fresh backbone and saved files."""
        raise NotImplementedError


IMAGE_METHODS: Registry[ImageMethod] = Registry("image method")


def implement(method: str, kind: str, impl: ImageMethod) -> None:
    """Register ``impl`` as how ``method`` runs on ``kind`` backbones, a kind its ``runs_on`` declares."""
    if kind not in METHODS.get(method).runs_on:
        raise TypeError(f"method {method!r} does not declare {kind!r} in its runs_on {METHODS.get(method).runs_on}")
    IMAGE_METHODS.add(f"{method}:{kind}", impl)


def image_method(method: str, kind: str) -> ImageMethod:
    """How ``method`` runs on a ``kind`` backbone; a row on a kind it does not declare is refused."""
    refuse_kind(METHODS.get(method), kind)
    return IMAGE_METHODS.get(f"{method}:{kind}")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path, "saved weights")

