"""``peft``: any peft method by its ``peft_type``, for the ones peftlab has no module for (HRA, C3A,
MiSS, RandLoRA, ...): ``{method: peft, peft_type: HRA, r: 8, target_modules: [query, value]}``.

The row's other keys are that peft config class's own fields, checked against the class when the
config is read (an unknown field is one config error naming it, before any model loads), then
the class itself is built once in :meth:`GenericPeft.check` so that peft's own value checks fail
early too. peftlab sets the task type and trains the head (peft's ``modules_to_save``), trains,
and saves in peft's format, so plain ``PeftModel.from_pretrained`` loads it.

What a dedicated module declares is unknown here: there is no closed-form count (results say "no
formula" where the counted numbers are checked), no activation flow (``peftlab plan`` lists the
row without an estimate), no composition rule, and merging is not assumed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftConfig, TaskType
from pydantic import ConfigDict, model_validator
from torch import nn

from peftlab.estimate.activations import Flow
from peftlab.estimate.params import ArchSpec
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError, first_line
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import PeftMethod, seq_cls_config

#: fields peftlab sets itself (the task, the trained head) or that peft fills in when saving
RESERVED = frozenset({"peft_type", "task_type", "modules_to_save", "base_model_name_or_path", "revision",
                      "inference_mode", "auto_mapping", "peft_version"})
#: peft types that need more than a config: their own module does it
NEEDS_MODULE = {"ADALORA": "method: adalora (its rank allocation runs after every optimizer step)"}


def config_class(peft_type: str) -> type[PeftConfig]:
    """peft's config class for ``peft_type`` (its ``PeftType`` name, any case)."""
    key = peft_type.upper()
    if key not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ValueError(f"peft_type: {peft_type!r} is not a peft type; one of "
                         f"{', '.join(sorted(str(k.value) for k in PEFT_TYPE_TO_CONFIG_MAPPING))}")
    return PEFT_TYPE_TO_CONFIG_MAPPING[key]


class GenericPeftParams(MethodParams):
    """``peft_type`` and that config class's fields as extra keys (``config_fields``)."""

    model_config = ConfigDict(extra="allow")

    method: Literal["peft"] = "peft"
    #: not a searched default (it depends on the peft type): a LoRA-like starting value; set the
    #: type's own rate, or search: {lr: auto}
    lr: PositiveFloat = 1e-3
    #: peft's name of the method (``adapter_config.json``'s ``peft_type``): HRA, C3A, MISS, ...
    peft_type: str

    @model_validator(mode="after")
    def _fields_of_the_config_class(self) -> "GenericPeftParams":
        cls = config_class(self.peft_type)
        key = self.peft_type.upper()
        if key in NEEDS_MODULE:
            raise ValueError(f"peft_type: {key} runs as {NEEDS_MODULE[key]}")
        fields = {f.name for f in dataclasses.fields(cls)}
        if "modules_to_save" not in fields:
            raise ValueError(f"peft_type: {key} cannot train a new classification head (no modules_to_save)")
        for name in self.config_fields:
            if name in RESERVED:
                raise ValueError(f"{name}: set by peftlab, not by the row")
            if name not in fields:
                raise ValueError(f"{name}: not a field of peft's {cls.__name__}")
        return self

    @property
    def config_fields(self) -> dict[str, Any]:
        """The row's keys for peft's config class."""
        return dict(self.model_extra or {})

    @property
    def label(self) -> str:
        """``name``, else ``peft-<type>``: two generic rows of different types are distinct rows."""
        return self.name or f"peft-{self.peft_type.lower()}"


class GenericPeft(PeftMethod):
    name = "peft"
    Params = GenericPeftParams
    peft_type = "any"  # the row's own peft_type
    merges = False  # not known for an arbitrary type: peftlab predict runs the adapter unmerged
    composition = None
    table_order = 290
    readme = Readme(
        on="text",
        trains="any peft method by `peft_type`, the row's other keys being its config class's fields; the head",
        closed_form="none: the row reports its counted numbers, \"no formula\"",
        via="peft",
    )

    def check(self, params: GenericPeftParams, spec: ArchSpec | None, model_type: str) -> None:
        """Build the config once without a model, so that peft's own checks of the values
        (ranges, combinations) fail before any weights load."""
        build(params)

    def peft_config(self, params: GenericPeftParams, model: nn.Module, spec: ArchSpec | None) -> PeftConfig:
        return seq_cls_config(config_class(params.peft_type), model, spec, **params.config_fields)

    def derived_trainable(self, params: GenericPeftParams, spec: ArchSpec) -> int | None:
        """None: no closed form is known for an arbitrary peft type."""
        return None

    def derived_total(self, params: GenericPeftParams, spec: ArchSpec) -> int | None:
        return None

    def flow(self, params: GenericPeftParams, spec: ArchSpec) -> Flow:
        """Not known: the plan lists the row without an estimate (no closed form comes first)."""
        raise NotImplementedError(f"no activation flow for peft type {params.peft_type}")


def build(params: GenericPeftParams) -> PeftConfig:
    """The row's config class with its fields (the task set, no head yet); peft's refusal of a
    value is one PeftlabError line."""
    try:
        return config_class(params.peft_type)(task_type=TaskType.SEQ_CLS, **params.config_fields)
    except (ValueError, TypeError) as exc:
        raise PeftlabError(f"config error: peft ({params.peft_type}): {first_line(exc)}") from None


REGISTERED = (GenericPeft,)
