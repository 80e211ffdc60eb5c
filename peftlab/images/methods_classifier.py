"""full, linear_probe and lora on image classifiers (EfficientNet-Lite, ViT and friends)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from torch import nn

from peftlab.images import params as P
from peftlab.images.backbones import ClassifierBackbone, logits_of
from peftlab.images.efficientnet import LiteConfig
from peftlab.images.method_base import (HEAD_FILE, Built, Forward, ImageContext, ImageMethod, implement,
                                        load_tensors, save_tensors)
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import freeze_all, unfreeze
from peftlab.methods.lora import family_options_on
from peftlab.methods.peft_common import load_peft, wrap_peft

MODEL_FILE = "model.safetensors"


def _fresh(ctx: ImageContext) -> nn.Module:
    return ctx.backbone.load(ctx.data.label_names, ctx.tcfg.seed)


def _pixels_forward(model: nn.Module) -> Forward:
    return lambda x: logits_of(model(pixel_values=x))


def _closed(bb: ClassifierBackbone, num_labels: int) -> tuple[int | None, int | None]:
    """(head, total) parameters in closed form; (None, None) for a family without formulas."""
    if isinstance(bb.arch, LiteConfig):
        return P.lite_head(bb.arch, num_labels), P.lite_total(bb.arch, num_labels)
    if bb.family == "vit":
        return P.vit_head(bb.arch, num_labels), P.vit_total(bb.arch, num_labels)
    return None, None


def freeze_batch_norms(model: nn.Module) -> None:
    """Batch norms in eval mode: a frozen network's running statistics must not drift while the
    method's own parameters train (they are not saved with the adapter)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class ClassifierFull(ImageMethod):
    """Every weight trains; the whole state (batch-norm statistics included) is saved."""

    def build(self, ctx: ImageContext, params: Any) -> Built:
        model = _fresh(ctx)
        for p in model.parameters():
            p.requires_grad_(True)
        return Built(model=model, trainable=model, forward=_pixels_forward(model), x_train=ctx.x_train,
                     x_eval=ctx.x_eval, save=lambda d: save_tensors(model.state_dict(), d / MODEL_FILE))

    def derived(self, ctx: ImageContext, params: Any) -> tuple[int | None, int | None]:
        _, total = _closed(ctx.backbone, ctx.data.num_labels)
        return total, total

    def predictor(self, backbone: Any, params: Any, labels: list[str], directory: Path, seed: int) -> Forward:
        model = backbone.load(labels, seed)
        model.load_state_dict(load_tensors(directory / MODEL_FILE))
        return _pixels_forward(model.eval())


class ClassifierProbe(ImageMethod):
    """Frozen backbone; the head trains on its inputs, captured once with a pre-hook and cached."""

    def build(self, ctx: ImageContext, params: Any) -> Built:
        model = _fresh(ctx).to(ctx.device).eval()  # features are computed here, before the runner moves it
        freeze_all(model)
        head = model.get_submodule(ctx.backbone.head_name(model))
        unfreeze(head)
        forward = _pixels_forward(model)

        def head_input(x: torch.Tensor) -> torch.Tensor:
            got: list[torch.Tensor] = []
            handle = head.register_forward_pre_hook(lambda _m, args: got.append(args[0]))
            try:
                forward(x)
            finally:
                handle.remove()
            return got[0]

        t0 = time.perf_counter()
        f_train, f_eval = ctx.features("head_inputs", head_input, model)
        return Built(model=model, trainable=head, forward=head, x_train=f_train, x_eval=f_eval,
                     save=lambda d: save_tensors(head.state_dict(), d / HEAD_FILE),
                     feature_s=time.perf_counter() - t0)

    def derived(self, ctx: ImageContext, params: Any) -> tuple[int | None, int | None]:
        return _closed(ctx.backbone, ctx.data.num_labels)

    def predictor(self, backbone: Any, params: Any, labels: list[str], directory: Path, seed: int) -> Forward:
        model = backbone.load(labels, seed)
        model.get_submodule(backbone.head_name(model)).load_state_dict(load_tensors(directory / HEAD_FILE))
        return _pixels_forward(model.eval())


class ClassifierLora(ImageMethod):
    """peft LoRA on the named linears (ViT attention) or 1x1 convs (CNNs), plus the head."""

    def check(self, params: Any) -> None:
        """The LoRA family's options (rsLoRA, DoRA, inits, LoRA+, all-linear) are text-only so far:
        this runner's closed forms, optimizer and saving do not implement them, so a row asking
        for one is refused rather than silently trained as plain LoRA."""
        on = family_options_on(params)
        if on:
            raise PeftlabError(f"config error: {params.label}: {', '.join(on)} not supported on image classifiers yet")

    def config(self, bb: ClassifierBackbone, model: nn.Module, params: Any) -> LoraConfig:
        return LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                          target_modules=params.target_modules or bb.default_targets(),
                          modules_to_save=[bb.head_name(model)])

    def build(self, ctx: ImageContext, params: Any) -> Built:
        base = _fresh(ctx)
        model = wrap_peft("lora", base, self.config(ctx.backbone, base, params))

        def train_mode() -> None:
            model.train()
            freeze_batch_norms(model)

        return Built(model=model, trainable=model, forward=_pixels_forward(model), x_train=ctx.x_train,
                     x_eval=ctx.x_eval, save=lambda d: model.save_pretrained(str(d)), train_mode=train_mode)

    def derived(self, ctx: ImageContext, params: Any) -> tuple[int | None, int | None]:
        bb, n = ctx.backbone, ctx.data.num_labels
        targets = params.target_modules or bb.default_targets()
        if isinstance(bb.arch, LiteConfig):
            lora = P.conv_lora_params(P.lite_convs(bb.arch), targets, params.r)
        elif bb.family == "vit":
            lora = P.vit_lora_params(bb.arch, targets, params.r)
        else:
            return None, None
        head, total = _closed(bb, n)
        trainable = lora + (head or 0)
        # peft keeps the original head next to the trained copy (modules_to_save)
        return trainable, (total or 0) + trainable

    def predictor(self, backbone: Any, params: Any, labels: list[str], directory: Path, seed: int) -> Forward:
        return _pixels_forward(load_peft(backbone.load(labels, seed), directory).eval())


for _name, _impl in (("full", ClassifierFull()), ("linear_probe", ClassifierProbe()), ("lora", ClassifierLora())):
    implement(_name, "classifier", _impl)
