"""Methods on a frozen CLIP-style dual encoder: zero-shot, CoOp, class embeddings, linear probe.

The image encoder never changes, so image embeddings are computed once per experiment and
cached; every method trains on those. Each one ends as a linear map on the normalised image
embedding, saved as ``head.safetensors`` (weight, bias): the one thing ``predict`` needs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftlab.infra.errors import PeftlabError
from peftlab.images import params as P
from peftlab.images.backbones import ClipBackbone
from peftlab.images.method_base import (HEAD_FILE, Built, Forward, ImageContext, ImageMethod, implement,
                                        load_tensors, save_tensors)
from peftlab.images.zeroshot import (DEFAULT_SEARCH_TEMPLATES, class_prompts, ensemble, normalise, spoken,
                                     template_search, zero_shot_logits)
from peftlab.results.metrics import classification_metrics


@torch.no_grad()
def encode_texts(clip: ClipBackbone, texts: list[str]) -> torch.Tensor:
    """Raw text embeddings, on the CPU (cached features live there too)."""
    ids, mask = clip.tokenize(texts)
    device = next(clip.model.parameters()).device
    return clip.encode_text(ids.to(device), mask.to(device)).float().cpu()


def text_classifier(clip: ClipBackbone, label_names: list[str], templates: list[str],
                    overrides: dict[str, list[str]] | None = None) -> torch.Tensor:
    """(classes, d) unit class embeddings: each class's prompts encoded, normalised, averaged."""
    prompts = class_prompts(label_names, templates, overrides or {})
    return torch.stack([ensemble(encode_texts(clip, p)[None])[0] for p in prompts])


def image_features(ctx: ImageContext) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Raw image embeddings of both splits (cached) and the seconds it took this call."""
    t0 = time.perf_counter()
    f_train, f_eval = ctx.features("clip_image", ctx.backbone.encode_image, ctx.backbone.model)
    return f_train, f_eval, time.perf_counter() - t0


def _head_saver(weight: Any, bias: Any = None) -> Any:
    """Save the final linear map on normalised image embeddings (callables: read at save time)."""
    def save(d: Path) -> None:
        w = weight()
        b = bias() if bias is not None else torch.zeros(w.shape[0])
        save_tensors({"weight": w, "bias": b}, d / HEAD_FILE)

    return save


class _LinearOnEmbedding(ImageMethod):
    def predictor(self, backbone: Any, params: Any, labels: list[str], directory: Path, seed: int) -> Forward:
        t = load_tensors(directory / HEAD_FILE)
        w, b = t["weight"], t["bias"]
        if w.shape[0] != len(labels):
            raise PeftlabError(f"{directory / HEAD_FILE}: {w.shape[0]} classes, the run has {len(labels)}")
        return lambda x: normalise(backbone.encode_image(x).float()) @ w.T.to(x.device) + b.to(x.device)


def _container(clip: ClipBackbone, learned: nn.Module | None = None) -> nn.Module:
    """The frozen CLIP plus what a method learns, so both are counted in the totals."""
    return nn.ModuleDict({"clip": clip.model, **({"learned": learned} if learned is not None else {})})


class ClipZeroShot(_LinearOnEmbedding):
    def build(self, ctx: ImageContext, params: Any) -> Built:
        clip, names = ctx.backbone, ctx.data.label_names
        f_train, f_eval, feature_s = image_features(ctx)
        unknown = sorted(set(params.class_prompts) - set(names))
        if unknown:
            raise PeftlabError(f"config error: clip_zeroshot.class_prompts: {unknown} are not classes {names}")
        weights = text_classifier(clip, names, params.templates, params.class_prompts)
        details, searched = self.diagnose(ctx, params, weights, f_train, f_eval)
        if params.apply_search:
            weights = searched
        scale = clip.logit_scale
        frozen = _container(clip)
        return Built(model=frozen, trainable=frozen, forward=lambda f: zero_shot_logits(f, weights.to(f.device), scale),
                     x_train=f_train, x_eval=f_eval, trains=False, feature_s=feature_s, details=details,
                     save=_head_saver(lambda: scale * weights))

    def diagnose(self, ctx: ImageContext, params: Any, weights: torch.Tensor, f_train: torch.Tensor,
                 f_eval: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
        """Accuracy per template, and the template search's before/after and its classifier.

        The classes to search are the worst by eval F1 (the diagnosis the report shows); each
        one's template is chosen on the training images.
        """
        clip, names, scale = ctx.backbone, ctx.data.label_names, ctx.backbone.logit_scale
        y_eval, y_train = ctx.data.eval.labels, ctx.data.train.labels

        def metrics(w: torch.Tensor) -> dict[str, Any]:
            return classification_metrics(y_eval, zero_shot_logits(f_eval, w, scale).argmax(-1).numpy(), names)

        per_template = {t: metrics(text_classifier(clip, names, [t]))["accuracy"] for t in params.templates}
        before = metrics(weights)
        out: dict[str, Any] = {"templates": list(params.templates), "per_template_accuracy": per_template,
                               "ensemble_accuracy": before["accuracy"], "class_prompts": dict(params.class_prompts)}
        if not params.search:
            return out, weights
        order = sorted(names, key=lambda c: before["per_class"][c]["f1-score"])[: params.search_worst]
        searched, w = [], weights.clone()
        for target in order:
            best = template_search(f_train, y_train, names, w, scale, target,
                                   params.search_templates or DEFAULT_SEARCH_TEMPLATES,
                                   lambda texts: encode_texts(clip, texts))
            w[names.index(target)] = best["embedding"]
            searched.append({"class": target, "template": best["template"], "train_macro_f1": best["macro_f1"]})
        after = metrics(w)
        out["search"] = {
            "chosen_on": "train split",
            "classes": searched,
            "before": _summary(before, order),
            "after": _summary(after, order),
        }
        return out, w

    def derived(self, ctx: ImageContext, params: Any) -> tuple[int | None, int | None]:
        return 0, None


def _summary(m: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "per_class": {c: {k: m["per_class"][c][k] for k in ("precision", "recall", "f1-score")} for c in classes}}


class ClassEmbeddingsModule(nn.Module):
    def __init__(self, init: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.clone())
        self.scale = scale

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * normalise(f) @ normalise(self.weight).T


class ClassEmbeddings(_LinearOnEmbedding):
    """One trainable embedding per class, starting at the zero-shot classifier (so epoch 0 = zero-shot)."""

    def build(self, ctx: ImageContext, params: Any) -> Built:
        clip = ctx.backbone
        f_train, f_eval, feature_s = image_features(ctx)
        head = ClassEmbeddingsModule(text_classifier(clip, ctx.data.label_names, params.templates), clip.logit_scale)
        return Built(model=_container(clip, head), trainable=head, forward=head, x_train=f_train, x_eval=f_eval,
                     feature_s=feature_s, save=_head_saver(lambda: head.scale * normalise(head.weight)))

    def derived(self, ctx: ImageContext, params: Any) -> tuple[int | None, int | None]:
        return P.class_embedding_params(ctx.data.num_labels, _embed_dim(ctx.backbone)), None


class ClipProbe(_LinearOnEmbedding):
    """Logistic regression on normalised, cached image embeddings."""

    def build(self, ctx: ImageContext, params: Any) -> Built:
        f_train, f_eval, feature_s = image_features(ctx)
        torch.manual_seed(ctx.tcfg.seed)
        head = nn.Linear(f_train.shape[1], ctx.data.num_labels)
        return Built(model=_container(ctx.backbone, head), trainable=head, forward=head, x_train=normalise(f_train),
                     x_eval=normalise(f_eval), feature_s=feature_s,
                     save=_head_saver(lambda: head.weight, lambda: head.bias))

    def derived(self, ctx: ImageContext, params: Any) -> tuple[int | None, int | None]:
        return P.probe_params(_embed_dim(ctx.backbone), ctx.data.num_labels), None


def _embed_dim(clip: ClipBackbone) -> int:
    return int(encode_texts(clip, ["a"]).shape[-1])


class PromptLearner(nn.Module):
    """CoOp's learnable context: [BOS] ctx_1..ctx_n <class name> . [EOS].

    Only ``ctx`` is a parameter; the token ids of the class-name prompts are buffers. The context
    replaces the placeholder positions at the output of the frozen token embedding (a forward
    hook), so the text encoder, its positions, causal mask and EOS pooling run unchanged. With one
    context for all classes and a text tower clip_prefix.py handles, [BOS] + context runs once
    instead of once per class (same features; the text tower is what every cached step costs).
    """

    def __init__(self, clip: ClipBackbone, label_names: list[str], params: Any, seed: int) -> None:
        super().__init__()
        if clip.token_embedding is None:
            raise PeftlabError(f"coop: backbone {clip.name!r} exposes no token embedding to put context vectors in")
        self.clip = [clip]  # a list: not a submodule (its weights are not ours)
        ids, mask = clip.tokenize([f"{spoken(c)}." for c in label_names])
        used = int(mask.sum(1).max())
        ids, mask = ids[:, :used], mask[:, :used]  # fixed-length tokenizers (open_clip) pad to 77
        emb = clip.token_embedding
        if params.ctx_init:
            init_ids, init_mask = clip.tokenize([params.ctx_init])
            words = init_ids[0, 1 : int(init_mask[0].sum()) - 1]  # without BOS and EOS
            ctx = emb.weight[words].detach().clone().float()
            if "n_ctx" in params.model_fields_set and len(words) != params.n_ctx:
                raise PeftlabError(f"config error: coop: ctx_init {params.ctx_init!r} is {len(words)} tokens, "
                                   f"but n_ctx is {params.n_ctx}; drop one of them")
        else:
            gen = torch.Generator().manual_seed(seed)
            ctx = torch.randn(params.n_ctx, emb.weight.shape[1], generator=gen) * 0.02
        self.n_ctx = len(ctx)
        if params.class_specific:
            ctx = ctx[None].repeat(len(label_names), 1, 1)
        self.ctx = nn.Parameter(ctx)
        filler = ids[:, :1].expand(-1, self.n_ctx)  # placeholder ids (BOS): replaced by the hook
        self.register_buffer("ids", torch.cat([ids[:, :1], filler, ids[:, 1:]], 1), persistent=False)
        self.register_buffer("mask", torch.cat([mask[:, :1], torch.ones_like(filler), mask[:, 1:]], 1), persistent=False)

    def _substitute(self, _m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx if self.ctx.ndim == 3 else self.ctx[None].expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :1], ctx.to(out.dtype), out[:, 1 + self.n_ctx :]], dim=1)

    def text_features(self) -> torch.Tensor:
        clip = self.clip[0]
        if self.ctx.ndim == 2 and clip.encode_text_shared_prefix is not None:
            # one context for all classes: [BOS] + ctx is every prompt's prefix, computed once
            bos = clip.token_embedding(self.ids[:1, :1])[0]
            prefix = torch.cat([bos, self.ctx.to(bos.dtype)], dim=0)
            return clip.encode_text_shared_prefix(prefix, self.ids).float()
        handle = clip.token_embedding.register_forward_hook(self._substitute)
        try:
            return clip.encode_text(self.ids, self.mask).float()
        finally:
            handle.remove()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.clip[0].logit_scale * normalise(f) @ normalise(self.text_features()).T


class Coop(_LinearOnEmbedding):
    def build(self, ctx: ImageContext, params: Any) -> Built:
        clip = ctx.backbone
        f_train, f_eval, feature_s = image_features(ctx)
        learner = PromptLearner(clip, ctx.data.label_names, params, ctx.tcfg.seed).to(ctx.device)

        def final_weight() -> torch.Tensor:
            with torch.no_grad():
                return clip.logit_scale * normalise(learner.text_features())

        def save(d: Path) -> None:
            _head_saver(final_weight)(d)
            save_tensors({"ctx": learner.ctx}, d / "coop_context.safetensors")

        return Built(model=_container(clip, learner), trainable=learner, forward=learner, x_train=f_train,
                     x_eval=f_eval, feature_s=feature_s, save=save)

    def derived(self, ctx: ImageContext, params: Any) -> tuple[int | None, int | None]:
        clip = ctx.backbone
        n_ctx = params.n_ctx
        if params.ctx_init:
            _ids, mask = clip.tokenize([params.ctx_init])
            n_ctx = int(mask[0].sum()) - 2
        width = clip.token_embedding.weight.shape[1]
        return P.coop_params(n_ctx, width, ctx.data.num_labels, params.class_specific), None


for _name, _impl in (("clip_zeroshot", ClipZeroShot()), ("coop", Coop()), ("class_embeddings", ClassEmbeddings()),
                     ("linear_probe", ClipProbe())):
    implement(_name, "clip", _impl)

