"""Image preprocessing with PIL and numpy: resize the short side, centre-crop, scale, normalise.

torchvision is not an option here (its CPU wheel breaks transformers), and transformers' fast
image processors need it; this reproduces what the slow CLIP/ViT processors do, reading the
sizes and statistics from a model folder's ``preprocessor_config.json`` when there is one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import read_json

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    size: int  # the square side the model sees
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: resize the short side to this before the centre crop (CLIP: = size; ImageNet recipes ~1.14x)
    resize: int | None = None

    def with_size(self, size: int | None) -> "Preprocess":
        return self if size is None else Preprocess(size, self.mean, self.std, None)

    def __call__(self, image: Any) -> np.ndarray:
        """One image (path, uint8 array or PIL image) -> float32 (3, size, size)."""
        from PIL import Image

        img = to_pil(image).convert("RGB")
        short = self.resize or self.size
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return x.transpose(2, 0, 1)

    def batch(self, images: list[Any]) -> torch.Tensor:
        """A split's images as one (N, 3, size, size) tensor, computed once per backbone."""
        return torch.from_numpy(np.stack([self(im) for im in images])) if images else torch.empty(0, 3, self.size, self.size)


def to_pil(image: Any) -> Any:
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8))
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                im.load()
                return im.copy()
        except (OSError, UnidentifiedImageError) as exc:
            raise PeftlabError(f"cannot read image {image}: {exc}") from None
    if isinstance(image, dict) and image.get("bytes"):  # datasets' Image feature, undecoded

        return to_pil(Image.open(io.BytesIO(image["bytes"])))
    raise PeftlabError(f"not an image: {type(image).__name__}")


def _side(v: Any) -> int | None:
    if isinstance(v, int):
        return v
    if isinstance(v, dict):
        return v.get("shortest_edge") or v.get("height")
    return None


def from_model_folder(folder: str | Path, default: Preprocess) -> Preprocess:
    """The slow image processor's settings from ``preprocessor_config.json``; ``default`` otherwise."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return default
    conf = read_json(path)
    crop = _side(conf.get("crop_size")) if conf.get("do_center_crop", True) else None
    resize = _side(conf.get("size"))
    size = crop or resize or default.size
    return Preprocess(
        size=size,
        mean=tuple(conf.get("image_mean") or default.mean),  # type: ignore[arg-type]
        std=tuple(conf.get("image_std") or default.std),  # type: ignore[arg-type]
        resize=resize if resize and resize != size else None,
    )
