"""``peftlab predict RUN_DIR/METHOD image.jpg``: rebuild a trained image method and classify files.

The predictor has the text predictor's interface (``labels``, ``probabilities(items)``), so the CLI
prints both the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import peftlab.images.methods_classifier  # noqa: F401  (registers the classifier methods)
import peftlab.images.methods_clip  # noqa: F401  (registers the CLIP methods)
from peftlab.config import load_config
from peftlab.infra.errors import PeftlabError
from peftlab.infra.fingerprint import check_base, image_base_fingerprint
from peftlab.images.backbones import backbone_kind, load_image_backbone
from peftlab.images.method_base import Forward, image_method
from peftlab.images.preprocess import Preprocess
from peftlab.results import ADAPTER_DIR, RESULTS_FILE, read_result


@dataclass
class ImagePredictor:
    labels: list[str]
    forward: Forward
    preprocess: Preprocess

    @torch.no_grad()
    def probabilities(self, images: list[str | Path]) -> np.ndarray:
        for p in images:
            if not Path(p).is_file():
                raise PeftlabError(f"image not found: {p}")
        logits = self.forward(self.preprocess.batch([str(p) for p in images]))
        return torch.softmax(logits.float(), -1).numpy()


def load_image_predictor(method_dir: str | Path, force_base: bool = False) -> ImagePredictor:
    mdir = Path(method_dir)
    result = read_result(mdir / RESULTS_FILE)
    if result.status != "ok":
        raise PeftlabError(f"{mdir}: that method's run did not finish (status {result.status})")
    cfg = load_config(mdir.parent / "config.yaml")
    params = cfg.method(mdir.name)
    method = image_method(params.method, backbone_kind(cfg.backbone))
    backbone = load_image_backbone(cfg.backbone)
    check_base(mdir / ADAPTER_DIR, image_base_fingerprint(backbone, result.labels, cfg.train.seed), force_base)
    forward = method.predictor(backbone, params, result.labels, mdir / ADAPTER_DIR, cfg.train.seed)
    return ImagePredictor(result.labels, forward, backbone.preprocess.with_size(cfg.task.image_size))

