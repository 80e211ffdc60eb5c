"""Base pydantic models shared by the experiment config and every method's own parameters.

Kept apart from :mod:`peftlab.config` so that method modules can define their parameter
models without importing the experiment config (which imports the methods).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


#: A strictly positive, finite float (learning rates, alphas...). NaN and inf are refused.
PositiveFloat = Annotated[float, Field(gt=0), AfterValidator(_finite)]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodParams(StrictModel):
    """Hyperparameters every method has. Subclasses add their own and fix ``method``.

    ``name`` labels the row in the comparison (defaults to the method), so one config can
    compare e.g. two LoRA ranks.
    """

    #: why ``train.class_weight`` cannot reach this method's loss (the config refuses the pair), or None
    class_weight_unreachable: ClassVar[str | None] = None

    method: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]+$")
    lr: PositiveFloat = 1e-4
    #: overrides ``train.epochs`` for this method (a cached linear probe can afford many more)
    epochs: int | None = Field(default=None, ge=1)
    #: this row's backbone (alias, path or hub id) instead of the experiment's, so one config can
    #: compare e.g. LoRA on MiniLM with LoRA and in-context learning on SmolLM2
    backbone: str | None = Field(default=None, min_length=1)
    #: an encoder-decoder row's head (peftlab.backbones.text_head), overriding ``backbone.head``, so
    #: one config can compare both heads. Left out of the recorded params when unset (``exclude_if``),
    #: so results written before the field existed still match their rows on a resumed run
    head: Literal["text", "classifier"] | None = Field(default=None, exclude_if=lambda v: v is None)
    #: ``head: text``: label name -> its verbalizer(s), overriding ``backbone.verbalizers``
    verbalizers: dict[str, list[str] | str] | None = Field(default=None, exclude_if=lambda v: v is None)

    @property
    def label(self) -> str:
        return self.name or self.method
