"""The image-only methods' parameters: ``clip_zeroshot``, ``coop`` and ``class_embeddings``.

They sit in the one METHODS registry so configs validate them like any other method, and declare
that they run on CLIP backbones only (``runs_on``): a text experiment, or an image classifier,
refuses them from that declaration before loading anything. Their implementations are in
peftlab.images.methods_clip.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.methods.base import Method, Readme

DEFAULT_TEMPLATES = ["a photo of a {}."]


class ClipZeroShotParams(MethodParams):
    """Prompts from ``templates`` (format strings); ``class_prompts`` overrides them per class.

    ``search`` tries ``search_templates`` (default: a CLIP-paper list) for the ``search_worst``
    worst classes by F1, choosing on the training images, and reports before/after on eval.
    """

    method: Literal["clip_zeroshot"] = "clip_zeroshot"
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES), min_length=1)
    class_prompts: dict[str, list[str]] = Field(default_factory=dict)
    search: bool = True
    search_templates: list[str] | None = Field(default=None, min_length=1)
    search_worst: int = Field(default=1, ge=1)
    #: use the searched prompts for the row's predictions (the report shows both either way)
    apply_search: bool = False


class CoopParams(MethodParams):
    """CoOp (Zhou et al. 2022): ``n_ctx`` learnable context vectors before each class name."""

    method: Literal["coop"] = "coop"
    lr: PositiveFloat = 2e-3
    n_ctx: int = Field(default=4, ge=1, le=32)
    #: initialise from these words' embeddings (sets n_ctx to their token count); None: random
    ctx_init: str | None = "a photo of a"
    class_specific: bool = False

    @model_validator(mode="after")
    def _n_ctx_not_overridden(self) -> CoopParams:
        """An explicit ``n_ctx`` with the default ``ctx_init`` would be silently replaced by the
        init phrase's length (4), so ask the user which one they meant."""
        if "n_ctx" in self.model_fields_set and "ctx_init" not in self.model_fields_set and self.ctx_init:
            raise ValueError(f"n_ctx: {self.n_ctx} is set, but the default ctx_init {self.ctx_init!r} fixes the "
                             "context length to its own token count; set ctx_init: null for random vectors")
        return self


class ClassEmbeddingsParams(MethodParams):
    """One trainable text-side embedding per class, initialised from the zero-shot classifier."""

    method: Literal["class_embeddings"] = "class_embeddings"
    lr: PositiveFloat = 1e-3
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES), min_length=1)


class _ImageOnly(Method):
    """A CLIP method's entry in METHODS: its parameters, README row and ``runs_on``, which refuses a
    text row (``refuse_kind``, in the text preflight) before anything loads. It declares no text
    closed form or flow (``TEXT_ONLY``): what it trains and counts is in peftlab.images.methods_clip."""

    runs_on = ("clip",)
    composition = None


class ClipZeroShot(_ImageOnly):
    name = "clip_zeroshot"
    Params = ClipZeroShotParams
    table_order = 500
    readme = Readme(
        on="CLIP",
        trains="nothing: class prompts → text embeddings, averaged over `templates`",
        closed_form="0",
    )


class Coop(_ImageOnly):
    name = "coop"
    Params = CoopParams
    table_order = 510
    readme = Readme(
        on="CLIP",
        trains="`n_ctx` context vectors before each class name (shared, or one set per class)",
        closed_form="`n_ctx` × text width (× classes)",
    )


class ClassEmbeddings(_ImageOnly):
    name = "class_embeddings"
    Params = ClassEmbeddingsParams
    table_order = 520
    readme = Readme(
        on="CLIP",
        trains="one text-side embedding per class, initialised from the zero-shot classifier",
        closed_form="classes × embedding dim",
    )


REGISTERED = (ClipZeroShot, Coop, ClassEmbeddings)
