"""The method interface: what every adaptation method provides to the runner.

A method takes a freshly loaded sequence-classification model and makes only its own parts
trainable; it knows its closed-form trainable count, where its trainable tensors sit for the
activation count (its flow), and how to save and reload what it trained. Adding a method = one
module in this package that names its classes in ``REGISTERED``: the package finds it and
registers them in ``METHODS`` (see ``__init__``), refusing a method that leaves any of
:data:`DECLARED` to the base class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from peftlab.estimate.activations import Flow
from peftlab.infra.config_base import MethodParams
from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import save_safetensors
from peftlab.estimate.params import ArchSpec, total_params

#: Names of the classification-head module used when the architecture has no closed-form spec.
DEFAULT_HEADS = ("classifier", "score")

#: the backbone kinds a row can run on: "text" (a text task: a sequence classifier, or a causal LM
#: for the icl runner), and an image task's "classifier" (CNN/ViT with a head) or "clip" (a dual
#: encoder; ``peftlab.images.backbones.backbone_kind`` tells the two apart from the config)
BACKBONE_KINDS = ("text", "classifier", "clip")
#: how a refusal names an image kind
_KIND_WORDS = {"classifier": "image classifier", "clip": "CLIP"}


@dataclass(frozen=True)
class Readme:
    """A method's row of README's methods table, written next to the code it describes (the
    table is generated from these rows: :mod:`peftlab.methods.readme`)."""

    #: what it runs on: "text", "causal LMs", "CLIP", ...
    on: str
    #: what trains (its options in backticks)
    trains: str
    #: its closed-form trainable count, in words
    closed_form: str
    #: the library it goes through ("peft"), shown after the name; "" when peftlab's own
    via: str = ""


#: (terms [(coefficient, adapter)], rank or None) -> the combined adapter's module tensors (no
#: head) and its config updates. An adapter is a :class:`peftlab.compose.adapter.Adapter`:
#: ``name``, peft ``config``, ``tensors`` by peft key.
Combiner = Callable[[list[tuple[float, Any]], "int | None"], tuple[dict[str, torch.Tensor], dict[str, object]]]
#: (module key, task vectors, weights) -> the merged task vector of that module (``--combine ties``
#: etc., :meth:`peftlab.compose.merge.MergeSpec.task_merge`)
TaskMerge = Callable[[str, list[torch.Tensor], list[float]], torch.Tensor]
#: a combiner for the non-linear merges: it hands each module's task vectors and the coefficients
#: to the merge it is given and stores the merged vectors as the method's tensors
Merger = Callable[[list[tuple[float, Any]], "int | None", TaskMerge], tuple[dict[str, torch.Tensor], dict[str, object]]]


@dataclass(frozen=True)
class Composition:
    """How a method's saved adapters compose by arithmetic (``peftlab compose``; Zhang et al. 2023),
    declared next to the method; the generic parts (same base, same modules, heads) are
    :mod:`peftlab.compose`'s."""

    #: tensor-key endings of the adapted modules (every other saved tensor belongs to the head)
    module_suffixes: tuple[str, ...]
    #: mode ("parameter", "weight") -> how ``sum c_i * adapter_i`` is computed
    combiners: Mapping[str, Combiner]
    #: the module tensors' value that adds no update (the zero module): 0 for LoRA's factors
    identity: float = 0.0
    #: refuse an adapter whose options the rule does not model (one PeftlabError line)
    check_options: Callable[[Any], None] | None = None
    #: refuse a pair the rule cannot combine in a mode, beyond one base and the same modules
    check_pair: Callable[[Any, Any, str], None] | None = None
    #: weight mode: the shapes that must agree when the operands' tensors may differ (LoRA: each
    #: update, d_out x d_in, whatever the ranks); None: each module tensor's own shape
    weight_shapes: Callable[[Any], dict[str, tuple[int, ...]]] | None = None
    #: mode -> the merger of task vectors; a mode missing here has no task vector of its own
    #: (LoRA's parameter mode: its factors are not the update), so ``--combine ties`` refuses it
    mergers: Mapping[str, Merger] = field(default_factory=dict)


class Method:
    """Base class; subclasses set ``name``, ``Params``, ``readme`` and ``composition`` and override
    what differs."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    #: its row of README's methods table (each method its own: a subclass states what it adds)
    readme: ClassVar[Readme]
    #: where that row stands: rows sort by it, then by name (so ``METHODS.in_order()``); the
    #: hundreds are the table's sections: 0 whole-model baselines, 100 weight adapters (the LoRA
    #: family and peft's reparameterisations), 300 prompts and bottleneck adapters, 400 causal LMs,
    #: 500 CLIP
    table_order: ClassVar[int]
    #: how its saved adapters compose, or None: it does not compose (declared either way)
    composition: ClassVar[Composition | None]
    #: the backbone kinds (:data:`BACKBONE_KINDS`) it runs on: the one declaration every "method X
    #: does not run on Y" refusal comes from (:func:`refuse_kind`); the image kinds' implementations
    #: (peftlab.images) can only be added for a kind declared here
    runs_on: ClassVar[tuple[str, ...]]
    #: the runner trains the head on cached frozen features instead of running the backbone
    caches_features: ClassVar[bool] = False
    #: which runner in ``runners.experiment.RUNNERS`` runs it: "train" (a classifier is
    #: fine-tuned) or "icl" (a causal LM scores label verbalizers)
    runner: ClassVar[str] = "train"
    #: whether its weights can be FSDP-sharded (runners.sharded); False refuses an FSDP launch
    shards: ClassVar[bool] = True
    #: what a family of methods asks each of its members to declare too (see :func:`undeclared`)
    requires: ClassVar[tuple[str, ...]] = ()

    def check(self, params: Any, spec: ArchSpec | None, model_type: str) -> None:
        """Refuse impossible combinations before any weights are loaded (raise PeftlabError)."""

    def load_kwargs(self, params: Any, head_names: tuple[str, ...]) -> dict[str, Any]:
        """Extra ``from_pretrained`` kwargs for loading the base model (e.g. a quantisation config).

        Most methods adapt a plain fp32 model: {}. ``head_names`` are the classification-head
        modules, for methods that must keep them out of a load-time transformation.
        """
        return {}

    def keeps_fp32(self, params: Any, device_type: str) -> str | None:
        """Why this method computes in fp32 on ``device_type`` whatever ``train.mixed_precision``
        says (recorded as the row's precision reason), or None: it follows the setting
        (peftlab.backbones.precision: bf16 autocast on CUDA, and on CPUs where it is measured faster)."""
        return None

    def lr_scale(self, params: Any, name: str) -> float:
        """The multiple of the row's ``lr`` that the trainable parameter ``name`` learns at.

        The runner builds one optimizer group per distinct scale (:func:`peftlab.runners.train.param_groups`),
        so a method whose parts want different rates (LoRA+: B faster than A) only declares them.
        """
        return 1.0

    def after_step(self, model: nn.Module, params: Any, step: int, total_steps: int) -> None:
        """Called by the training loop after each optimizer step, before the gradients are cleared,
        with the steps done so far (1 after the first) and the run's total.

        Why a hook: a method whose trainable set changes during training by a schedule over the
        run (AdaLoRA prunes its ranks from the gradients' importance, toward a budget reached at a
        step fixed in advance) needs the loop's step count, which ``prepare`` cannot know (it
        depends on the data, the batch size and the processes). Most methods: nothing.
        """

    def prepare(self, model: nn.Module, params: Any, spec: ArchSpec | None) -> nn.Module:
        """Freeze/inject so that exactly this method's parameters require grad."""
        raise NotImplementedError

    def derived_trainable(self, params: Any, spec: ArchSpec) -> int | None:
        """The closed-form trainable count, from the architecture alone (checked against the model).

        None: the method knows no closed form (the generic ``peft`` row); its results say "no
        formula" and ``peftlab plan`` lists it without an estimate, instead of a guessed number."""
        raise NotImplementedError

    def flow(self, params: Any, spec: ArchSpec) -> Flow:
        """Where this method's trainable tensors sit, so that ``peftlab plan`` counts what autograd
        keeps for one training step (:mod:`peftlab.estimate.activations`) before any weights load."""
        raise NotImplementedError

    def derived_total(self, params: Any, spec: ArchSpec) -> int | None:
        """Total parameters of the prepared model; methods that add parameters override (None
        where ``derived_trainable`` is None)."""
        return total_params(spec)

    def save(self, model: nn.Module, params: Any, directory: Path) -> None:
        save_trainable(model, directory, self.name)

    def load(self, model: nn.Module, params: Any, spec: ArchSpec | None, directory: Path) -> nn.Module:
        """Rebuild the trained model from a fresh base model and the saved files."""
        load_trainable(model, directory)
        return model


#: what every registered method declares, in its own class or a base below ``Method``: nothing
#: here may fall back to a silent default (a method without a flow would be planned as something
#: it is not)
DECLARED = ("name", "Params", "derived_trainable", "flow", "composition", "runs_on")
#: of those, what only a method that runs on text declares (an image-only method's counts and
#: training are its image implementations', peftlab.images: it has no text-side stubs)
TEXT_ONLY = ("derived_trainable", "flow")
#: what every registered method declares in its own class, never inherited (qlora is a lora, but
#: its own row of the table, in its own place)
DECLARED_OWN = ("name", "Params", "readme", "table_order")


def undeclared(method: Method) -> list[str]:
    """The names of :data:`DECLARED` (less :data:`TEXT_ONLY` for a method that does not run on
    text), :data:`DECLARED_OWN` and the method's family's ``requires`` that ``method`` leaves undeclared."""
    below = [vars(k) for k in type(method).__mro__ if k not in (Method, object)]
    text = "text" in getattr(method, "runs_on", ("text",))
    wanted = [a for a in DECLARED if text or a not in TEXT_ONLY] + list(method.requires)
    missing = [a for a in wanted if not any(a in d for d in below)]
    return missing + [a for a in DECLARED_OWN if a not in vars(type(method)) and a not in missing]


def refuse_kind(method: Method, kind: str) -> None:
    """Refuse (one config error line) a row whose backbone kind ``method.runs_on`` does not list:
    a text task for an image-only method, an image backbone the method has no implementation for."""
    if kind in method.runs_on:
        return
    images = [k for k in BACKBONE_KINDS if k != "text" and k in method.runs_on]
    if kind == "text":
        raise PeftlabError(f"config error: method {method.name!r} needs an image task with a "
                           f"{' or '.join(_KIND_WORDS[k] for k in images)} backbone")
    where = f"it runs on {' and '.join(sorted(images))} backbones" if images else "it is a text-only method"
    raise PeftlabError(f"config error: method {method.name!r} does not run on a {kind} image backbone ({where})")


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(True)


def head_names(model: nn.Module, spec: ArchSpec | None) -> tuple[str, ...]:
    """The classification-head modules every method trains; () for a spec that has none (an
    encoder-decoder under ``head: text``: the LM head scores the verbalizers and stays frozen)."""
    if spec is not None and not spec.head_modules:
        return ()
    names = spec.head_modules if spec is not None else DEFAULT_HEADS
    found = tuple(n for n in names if _has_submodule(model, n))
    if not found:
        raise PeftlabError(f"no classification head found (looked for {', '.join(names)})")
    return found


def last_head(model: nn.Module, spec: ArchSpec | None) -> str:
    """The last head module (BERT: ``classifier``, after the pooler): what a method that trains on
    cached features trains; the frozen head modules before it are part of the feature map."""
    return head_names(model, spec)[-1]


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


WEIGHTS_FILE = "weights.safetensors"
META_FILE = "peftlab_method.json"


def save_trainable(model: nn.Module, directory: Path, method: str) -> None:
    """Save the tensors that were trained (requires_grad) as safetensors, plus a small JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_safetensors(tensors, directory / WEIGHTS_FILE)
    meta = {"peftlab_method": method, "tensors": len(tensors)}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_trainable(model: nn.Module, directory: Path) -> None:
    """Load saved trained tensors onto a fresh base model; every key must exist with its shape."""
    path = directory / WEIGHTS_FILE
    tensors = read_safetensors(path, "saved weights")
    own = dict(model.named_parameters())
    for name, t in tensors.items():
        if name not in own:
            raise PeftlabError(f"{path}: tensor {name!r} does not exist in this base model")
        if tuple(own[name].shape) != tuple(t.shape):
            raise PeftlabError(
                f"{path}: tensor {name!r} has shape {tuple(t.shape)}, base model has {tuple(own[name].shape)}"
            )
    with torch.no_grad():
        for name, t in tensors.items():
            own[name].copy_(t.to(own[name].dtype))


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a missing or unreadable file into one clear line."""
    if not path.is_file():
        raise PeftlabError(f"no {what} at {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PeftlabError(f"cannot read {path}: {exc}") from None
