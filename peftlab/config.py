"""The experiment config: one YAML file, validated completely before any model is loaded.

Errors come out as one line naming the field (``methods[1].r: Input should be greater than 0``),
raised as :class:`~peftlab.infra.errors.PeftlabError` so the CLI exits with code 2.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from peftlab.infra.config_base import MethodParams, PositiveFloat, StrictModel
from peftlab.infra.errors import PeftlabError
from peftlab.infra.guards import check_task_type
from peftlab.infra.tracking import tracker_names
from peftlab.methods import METHODS


class BackboneConfig(StrictModel):
    """A Hugging Face model: offline alias (``minilm-l6``), local path, or hub id."""

    name: str = Field(min_length=1)
    revision: str | None = None
    trust_remote_code: bool = False
    #: how an encoder-decoder (T5 family) classifies: ``text`` scores each label's verbalizer with
    #: the LM (no new parameter; peftlab.backbones.text_head), ``classifier`` adds
    #: T5ForSequenceClassification's pooled head; ``auto``: text for encoder-decoders (the issue's
    #: default, as T5 was trained), classifier for every other backbone (its only head). A row's own
    #: ``head`` overrides it; a row with its own ``backbone`` takes ``auto`` unless it sets ``head``
    head: Literal["auto", "text", "classifier"] = "auto"
    #: ``head: text``: label name -> its verbalizer(s); default each label's own name
    verbalizers: dict[str, list[str] | str] | None = None


IMAGE_SOURCES = ("image_folder", "hf_image", "cifar10", "fashion_mnist")


class TaskConfig(StrictModel):
    """Where the data comes from and which columns mean what.

    ``source`` is ``builtin`` (offline tasks shipped in packages: ``drugreview``, ``bbcnews``,
    ``rotten_tomatoes``),
    ``hf`` (a Hugging Face dataset id), or a local ``csv``/``tsv``/``jsonl``/``parquet`` file.
    """

    source: Literal["builtin", "hf", "csv", "tsv", "jsonl", "parquet",
                    "image_folder", "hf_image", "cifar10", "fashion_mnist"] = "builtin"
    name: str | None = None
    hf_id: str | None = None
    hf_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    train_file: str | None = None
    eval_file: str | None = None
    eval_fraction: float = Field(default=0.2, gt=0, lt=1)
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = Field(default=None, min_length=2)
    n_train: int | None = Field(default=None, ge=2)
    n_eval: int | None = Field(default=None, ge=1)
    # Image tasks (sources image_folder, hf_image, cifar10, fashion_mnist): see peftlab/tasks/images.py
    #: image_folder: a folder of class subfolders (or with train/ and val|test/ inside); cifar10:
    #: the cifar-10-batches-py folder; fashion_mnist: the IDX folder (default: the Debian package's)
    data_dir: str | None = None
    image_column: str = "image"
    #: seeded k-shot sampling: at most k training images per class
    k_shot: int | None = Field(default=None, ge=1)
    #: square input side in pixels; None: the backbone's own (224 for EfficientNet-Lite0)
    image_size: int | None = Field(default=None, ge=16, le=1024)

    @property
    def modality(self) -> str:
        """"image" or "text": picks the experiment runner (peftlab.runners.experiment.MODALITY_RUNNERS)."""
        return "image" if self.source in IMAGE_SOURCES else "text"

    @model_validator(mode="after")
    def _source_fields(self) -> "TaskConfig":
        if self.source in ("image_folder", "cifar10") and not self.data_dir:
            raise ValueError(f"task.data_dir is required for source {self.source!r}")
        if self.source == "hf_image" and not self.hf_id:
            raise ValueError("task.hf_id is required for source 'hf_image'")
        if self.source == "builtin" and not self.name:
            raise ValueError("task.name is required for source 'builtin'")
        if self.source == "hf" and not self.hf_id:
            raise ValueError("task.hf_id is required for source 'hf'")
        if self.source in ("csv", "tsv", "jsonl", "parquet") and not self.train_file:
            raise ValueError(f"task.train_file is required for source {self.source!r}")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError("task.label_names has duplicates")
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.hf_id or Path(self.train_file or self.data_dir or self.source).stem


class TrainConfig(StrictModel):
    """Settings shared by every method of the experiment (the learning rate is per method)."""

    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int = Field(default=64, ge=1)
    max_length: int = Field(default=128, ge=8, le=32768)
    grad_accum: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: PositiveFloat = 1.0
    eval_every_epoch: bool = True
    group_by_length: bool = True
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    #: "balanced": each example's loss times n_samples / (n_classes * count of its class) in the
    #: training split (sklearn's "balanced"), for imbalanced tasks; "none": plain cross-entropy
    class_weight: Literal["none", "balanced"] = "none"
    #: what "best" means in the report's verdicts (peftlab.results.metrics.SELECT_METRICS); for the
    #: learning-rate search see ``search.metric``
    select_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    #: "auto" uses CUDA when present; "cpu" forces the CPU even there (exact fp32 comparisons)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(default=None, ge=1)
    #: write resumable checkpoints at each epoch end (and every ``checkpoint_every`` optimizer steps)
    checkpoints: bool = True
    checkpoint_every: int = Field(default=0, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)
    #: stop before loading weights when a method's memory estimate exceeds the free memory (peftlab.estimate.plan)
    memory_check: bool = True
    #: measure how far each encoder row moved its backbone: linear CKA of the adapted model's pooled
    #: features to the base's on up to 512 eval inputs (details.drift, the report's "CKA to base").
    #: On by default: it costs one forward pass over those inputs before and after training and no
    #: second copy of the weights (runners/drift.py), small next to training even on the tiny tests
    drift: bool = True
    #: optional experiment trackers, e.g. [tensorboard, mlflow] (see peftlab.infra.tracking)
    log_to: list[str] = Field(default_factory=list)

    @field_validator("log_to", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> list[str]:
        return tracker_names(v)


class SearchConfig(StrictModel):
    """A learning-rate search per method before its full run (see peftlab.runners.lr_search)."""

    #: values to try, or "auto": log-spaced around each method's own default
    lr: list[PositiveFloat] | Literal["auto"] = "auto"
    #: optimizer steps per trial (the explicit cost of the search)
    budget_steps: int = Field(default=30, ge=1)
    #: share of the training split held out to score the trials (the eval split is never used)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    metric: Literal["eval_loss", "accuracy", "macro_f1"] = "eval_loss"

    @field_validator("lr")
    @classmethod
    def _nonempty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one value, or auto")
        return v


@lru_cache(maxsize=1)
def _method_union() -> Any:
    """Discriminated union of every registered method's parameter model (built once)."""
    classes = tuple(METHODS.get(n).Params for n in METHODS.names())
    return Annotated[Union[classes], Field(discriminator="method")]  # type: ignore[valid-type]


class ExperimentConfig(StrictModel):
    name: str = Field(default="experiment", pattern=r"^[A-Za-z0-9_.\-]+$")
    backbone: BackboneConfig
    task: TaskConfig
    methods: list[MethodParams] = Field(min_length=1)
    train: TrainConfig = TrainConfig()
    output_dir: str = "runs/experiment"
    baseline: bool = True
    #: per-method learning-rate search before each full run; None: every method uses its own ``lr``
    search: SearchConfig | None = None
    #: run every method once per seed (mean ± std in the comparison); None: the single ``train.seed``
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("has duplicates")
        return v

    @property
    def seed_list(self) -> list[int]:
        """The seeds each method runs with: ``seeds``, or ``[train.seed]``."""
        return list(self.seeds) if self.seeds else [self.train.seed]

    @field_validator("backbone", mode="before")
    @classmethod
    def _backbone_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("methods", mode="before")
    @classmethod
    def _methods_shorthand(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"method": m} if isinstance(m, str) else
                    check_task_type(m, f"methods[{i}]") if isinstance(m, dict) else m for i, m in enumerate(v)]
        return v

    @model_validator(mode="after")
    def _text_only_options(self) -> "ExperimentConfig":
        """The image runner has no seeds loop or learning-rate search yet: refuse rather than ignore."""
        if self.task.modality != "text":
            if self.seeds and len(self.seeds) > 1:
                raise ValueError("seeds: several seeds run on text tasks only (for now); give one")
            if self.search is not None:
                raise ValueError("search: the learning-rate search runs on text tasks only (for now)")
        return self

    @model_validator(mode="after")
    def _head_options(self) -> "ExperimentConfig":
        """``head`` and ``verbalizers`` are for text rows that fine-tune (the in-context methods have
        their own ``verbalizers``; image runs have no text head): refuse them anywhere else."""
        image = self.task.modality != "text"
        if image and (self.backbone.head != "auto" or self.backbone.verbalizers):
            raise ValueError("backbone.head / backbone.verbalizers: image runs have no text head; remove them")
        for i, m in enumerate(self.methods):
            icl = METHODS.get(m.method).runner != "train" if m.method in METHODS else False
            if m.head is not None and (image or icl):
                raise ValueError(f"methods[{i}].head: {m.method} rows have no head to choose (only text rows that "
                                 "fine-tune do)")
            if m.verbalizers is not None and image:
                raise ValueError(f"methods[{i}].verbalizers: image runs have no text head; remove it")
        return self

    def head_for(self, params: MethodParams) -> str:
        """The head a row asks for ("auto", "text", "classifier"), resolved against its backbone by
        peftlab.backbones.text_head.resolve_head: the row's, else its backbone's."""
        if params.head is not None:
            return params.head
        return self.backbone.head if params.backbone in (None, self.backbone.name) else "auto"

    def verbalizers_for(self, params: MethodParams) -> dict[str, list[str] | str] | None:
        """A row's ``head: text`` verbalizers: the row's, else the experiment backbone's."""
        if params.verbalizers is not None:
            return params.verbalizers
        return self.backbone.verbalizers if params.backbone in (None, self.backbone.name) else None

    @model_validator(mode="after")
    def _class_weight_applies(self) -> "ExperimentConfig":
        """A method whose loss ``class_weight`` does not reach (lm_lora: its answer tokens'
        language-model loss) says so in its Params: refuse rather than report a row as weighted
        that was not."""
        if self.train.class_weight != "none":
            for i, m in enumerate(self.methods):
                if m.class_weight_unreachable:
                    raise ValueError(f"train.class_weight: {self.train.class_weight} does not apply to methods[{i}] "
                                     f"({m.class_weight_unreachable}); run it in a config without it")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> "ExperimentConfig":
        labels = [m.label for m in self.methods]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"methods: duplicate row names {dupes}; give each a distinct 'name'")
        return self

    def backbone_for(self, params: MethodParams) -> BackboneConfig:
        """The row's own backbone when it names one (same trust setting), else the experiment's."""
        if params.backbone is None or params.backbone == self.backbone.name:
            return self.backbone
        return BackboneConfig(name=params.backbone, trust_remote_code=self.backbone.trust_remote_code)

    def method(self, label: str) -> MethodParams:
        for m in self.methods:
            if m.label == label:
                return m
        raise PeftlabError(f"no method named {label!r} in this config")


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:  # a key with spaces, dots or control characters is quoted, so the line stays one line
            name = str(part) if re.fullmatch(r"[\w\-]+", str(part)) else repr(part)
            out += f".{name}" if out else name
    return out


def _format_error(err: ValidationError) -> str:
    """The first pydantic error as one line naming the field."""
    e = err.errors()[0]
    loc = list(e["loc"])
    # A discriminated union puts the tag in the path (methods[1].lora.r): drop it.
    if len(loc) >= 3 and loc[0] == "methods" and isinstance(loc[1], int) and isinstance(loc[2], str):
        if loc[2] in METHODS:
            del loc[2]
    where = _format_loc(tuple(loc))
    if e["type"] == "union_tag_invalid":
        tag = e.get("ctx", {}).get("tag", "?")
        return f"{where}.method: {METHODS.unknown_message(tag)}"
    if e["type"] == "union_tag_not_found":
        return f"{where}: each method needs a 'method' key"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    got = e.get("input")
    shown = f" (got {got!r})" if isinstance(got, (int, float, str, bool)) and e["type"] != "missing" else ""
    line = f"{where}: {msg}{shown}" if where else f"{msg}{shown}"
    return " ".join(line.split("\n"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=1`` -> (['train', 'epochs'], 1); the value is parsed as YAML."""
    if "=" not in text:
        raise PeftlabError(f"override {text!r} is not of the form key=value")
    key, _, raw = text.partition("=")
    if not key or any(not p for p in key.split(".")):
        raise PeftlabError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    """Set a nested key; list items by index (``methods.0.lr``) or by row name (``methods.lora.r``)."""
    node: Any = raw
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, ".".join(path[: i + 1]))
            if last:
                node[idx] = value
            else:
                if isinstance(node[idx], str):
                    node[idx] = {"method": node[idx]}
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if isinstance(node.get(part), str) and part == "backbone":
                    node[part] = {"name": node[part]}
                node = node.setdefault(part, {})
        else:
            raise PeftlabError(f"override {'.'.join(path)}: {'.'.join(path[:i])} is not a mapping")


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> None:
    """Apply ``key=value`` overrides (the CLI's trailing arguments) to ``raw`` in order."""
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(items) <= idx < len(items):
            raise PeftlabError(f"override {where}: index out of range (list has {len(items)} items)")
        return idx
    for idx, item in enumerate(items):
        label = item if isinstance(item, str) else (item.get("name") or item.get("method"))
        if label == part:
            return idx
    raise PeftlabError(f"override {where}: no list item named {part!r}")


def load_raw(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise PeftlabError(f"config {p} is a folder, not a YAML file")
    if not p.is_file():
        raise PeftlabError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PeftlabError(f"config {p}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PeftlabError(f"config {p}: malformed YAML{where}") from None
    if raw is None:
        raise PeftlabError(f"config {p} is empty")
    if not isinstance(raw, dict):
        raise PeftlabError(f"config {p}: top level must be a mapping of keys to values")
    return raw


def validate_raw(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain dict; the one place pydantic errors become one-line PeftlabErrors."""
    model = _experiment_model()
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise PeftlabError(f"config error: {_format_error(err)}") from None


@lru_cache(maxsize=1)
def _experiment_model() -> type[ExperimentConfig]:
    """ExperimentConfig with ``methods`` typed as the union of every registered method."""
    union = _method_union()

    class _Experiment(ExperimentConfig):
        methods: list[union] = Field(min_length=1)  # type: ignore[valid-type]

    _Experiment.__name__ = "ExperimentConfig"
    return _Experiment


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    raw = load_raw(path)
    apply_overrides(raw, overrides)
    return validate_raw(raw)


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (stored in the run dir so every number can be reproduced)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
