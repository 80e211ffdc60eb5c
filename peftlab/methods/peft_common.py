"""Shared plumbing for the methods implemented by Hugging Face peft (lora, qlora, ia3,
prompt/p/prefix tuning).

A peft method builds a ``PeftConfig``, wraps the model with ``get_peft_model`` and saves in peft's
own format, so plain ``PeftModel.from_pretrained`` loads what peftlab trained. Every such config
is built by :func:`seq_cls_config`, so the task type and the trained head are set in one place.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import Any, ClassVar

from peft import PeftConfig, PeftModel, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model
from safetensors import SafetensorError
from torch import nn

from peftlab.infra.errors import PeftlabError, first_line
from peftlab.methods.base import Method, head_names
from peftlab.estimate.params import ArchSpec, is_text_head, targeted_linears, total_params


def seq_cls_config(config_class: type[PeftConfig], model: nn.Module, spec: ArchSpec | None,
                   **fields: Any) -> PeftConfig:
    """``config_class(**fields)`` for sequence classification, with the head trained and saved.

    A new task needs a new head, so every peft method trains it through peft's
    ``modules_to_save`` (which also puts it in the saved adapter); the method only names its own
    fields (rank, virtual tokens, ...).

    An encoder-decoder under ``head: text`` (a spec without head modules, peftlab.backbones.text_head)
    is a seq2seq LM: task type SEQ_2_SEQ_LM (peft feeds the decoder the label's verbalizer), nothing
    in ``modules_to_save``, so the saved adapter is a plain seq2seq adapter (generation works). Prompt
    tuning and P-tuning get ``num_transformer_submodules=1``: peft's seq2seq forward prepends their
    virtual tokens to the encoder input only, and its default of 2 would allocate (and count as
    trainable) a second set of tokens for the decoder that no forward ever reads.
    """
    if is_text_head(spec):
        one = {"num_transformer_submodules": 1} if issubclass(config_class, (PromptTuningConfig, PromptEncoderConfig)) else {}
        return config_class(task_type=TaskType.SEQ_2_SEQ_LM, **one, **fields)
    return config_class(task_type=TaskType.SEQ_CLS, modules_to_save=list(head_names(model, spec)), **fields)


def check_targets(method: str, targets: list[str], spec: ArchSpec | None, model_type: str) -> None:
    """Refuse ``target_modules`` that name no linear layer of a known architecture, before any
    model is loaded (``spec`` None: an architecture without closed forms, left to peft)."""
    if spec is not None and not targeted_linears(spec, targets):
        raise PeftlabError(
            f"config error: {method}.target_modules: {targets} match no linear layer of this {model_type} backbone"
        )


class PeftMethod(Method):
    """Subclasses provide ``peft_config`` and declare ``peft_type`` and ``merges``;
    prepare/save/load/derived_total are shared."""

    runs_on = ("text",)
    #: peft's per-architecture default ``target_modules`` for a method applied to named linears
    #: (vera, loha, lokr, ...: :class:`TargetedPeftMethod`); such a method's params carry
    #: ``target_modules`` and it uses :meth:`default_or_row_targets` and :meth:`check_row_targets`
    default_targets: ClassVar[Mapping[str, Any]] = {}

    def default_or_row_targets(self, params: Any, model_type: str) -> list[str]:
        """The row's ``target_modules``, or peft's defaults for the architecture."""
        if params.target_modules is not None:
            return list(params.target_modules)
        if model_type not in self.default_targets:
            raise PeftlabError(f"{self.name}: no default target_modules for architecture {model_type!r}; "
                               "set target_modules")
        return list(self.default_targets[model_type])

    def check_row_targets(self, params: Any, spec: ArchSpec | None, model_type: str) -> None:
        """Refuse targets that name no linear of the architecture, before any model loads."""
        check_targets(self.name, self.default_or_row_targets(params, model_type), spec, model_type)

    #: peft's name for its adapters (``adapter_config.json``'s ``peft_type``): "LORA", "IA3", ...
    peft_type: ClassVar[str]
    #: whether its trained update folds exactly into the base weights (``peftlab predict`` merges it)
    merges: ClassVar[bool]
    requires = ("peft_type", "merges")

    def peft_config(self, params: Any, model: nn.Module, spec: ArchSpec | None) -> PeftConfig:
        raise NotImplementedError

    def prepare(self, model: nn.Module, params: Any, spec: ArchSpec | None) -> nn.Module:
        return wrap_peft(self.name, model, self.peft_config(params, model, spec))

    def derived_total(self, params: Any, spec: ArchSpec) -> int:
        # Everything trained is new: the method's own tensors, and the head copy that peft's
        # modules_to_save trains while the original head stays in the model, frozen.
        return total_params(spec) + self.derived_trainable(params, spec)

    def save(self, model: nn.Module, params: Any, directory: Path) -> None:
        model.save_pretrained(str(directory))

    def load(self, model: nn.Module, params: Any, spec: ArchSpec | None, directory: Path) -> nn.Module:
        return load_peft(model, directory)


class TargetedPeftMethod(PeftMethod):
    """A peft method applied to named modules (``target_modules``, else peft's per-architecture
    ``default_targets``): linears for most, norms for LN tuning. Targets that name nothing of the
    architecture are refused before any model loads; a method with more to check extends ``check``."""

    def targets(self, params: Any, model_type: str) -> list[str]:
        return self.default_or_row_targets(params, model_type)

    def check(self, params: Any, spec: ArchSpec | None, model_type: str) -> None:
        self.check_row_targets(params, spec, model_type)


def wrap_peft(method: str, model: nn.Module, config: PeftConfig) -> nn.Module:
    """``get_peft_model``; a model peft cannot adapt this way (no such modules, unsupported layer
    type) is the user's choice of backbone or targets, so a one-line PeftlabError."""
    try:
        return get_peft_model(model, config)
    except (ValueError, KeyError, TypeError) as exc:
        raise PeftlabError(f"{method}: peft refused this backbone: {first_line(exc)}") from None


def load_peft(model: nn.Module, directory: Path) -> nn.Module:
    if not (directory / "adapter_config.json").is_file():
        raise PeftlabError(f"no peft adapter at {directory} (adapter_config.json missing)")
    try:
        return PeftModel.from_pretrained(model, str(directory))
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as exc:  # e.g. a truncated file
        raise PeftlabError(f"cannot load adapter {directory}: {first_line(exc)}") from None
