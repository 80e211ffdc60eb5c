"""The composition scenarios of Zhang et al. (2023), shipped as configs that run offline.

``peftlab compose-scenario configs/compose_*.yaml`` prepares the data (written as CSV under
``OUTPUT_DIR/data`` so every module is an ordinary peftlab run), trains the LoRA modules with the
usual runner, composes them, chooses each coefficient on a validation split held out of the
training data, and reports every row on the task's test split in one comparison table.

* ``generalisation``: two LoRAs on two halves of the training data with opposite label skews;
  each alone, their mixes (parameter and weight space, lambda chosen on validation), their plain
  weight-space sum, and one LoRA trained on all of it.
* ``negation``: a LoRA trained on the task with flipped labels, subtracted from the task LoRA.
* ``analogy``: two domains of one task (``DOMAINS``: BBC article leads vs closing paragraphs, or
  drug reviews of some conditions vs the rest). The task is learnt on domain A only; domain
  modules learn a label-free task on each domain's text (word-shuffle detection, standing in for
  the paper's language-model modules); ``task_a + lambda*(dom_b - dom_a)`` is scored on domain B
  against the vanilla transfer (``task_a`` alone) and an in-domain reference (``task_b``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator, ValidationError

from peftlab.compose import scenario_data as sd
from peftlab.config import _format_error, apply_overrides, load_raw, TaskConfig, TrainConfig
from peftlab.infra.config_base import StrictModel
from peftlab.infra.errors import PeftlabError
from peftlab.methods.lora import LoraParams
from peftlab.infra.registry import Registry
from peftlab.tasks.base import Split
from peftlab.tasks.sampling import stratified_indices, stratified_split
from peftlab.compose.sweep import parse_sweep
from peftlab.infra.tracking import check_trackers
from peftlab.tasks import load_task


class ScenarioConfig(StrictModel):
    name: str = Field(default="compose", pattern=r"^[A-Za-z0-9_.\-]+$")
    scenario: Literal["generalisation", "negation", "analogy"]
    backbone: str = "minilm-l6"
    task: Literal["drugreview", "bbcnews"] = "drugreview"
    #: LoRA hyperparameters of every module (LoraParams fields: r, alpha, dropout, lr, ...)
    lora: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig(epochs=2, num_threads=1)
    #: subsample of the training pool (after the validation hold-out; analogy: of each domain)
    n_train: int | None = Field(default=None, ge=6)
    #: stratified subsamples of the validation split (chooses lambda) and the test split (CPU time)
    n_val: int | None = Field(default=None, ge=3)
    n_test: int | None = Field(default=None, ge=3)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    sweep: str = "lambda=0:1:0.25"
    #: generalisation: fraction of the first class in half A (the last class gets 1 - skew)
    skew: float = Field(default=0.8, ge=0.5, lt=1)
    #: analogy on drugreview: the conditions that make domain A (the rest is domain B)
    domain: list[str] = Field(default_factory=lambda: ["Birth Control", "Emergency Contraception"])
    output_dir: str = "runs/compose"

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, text: str) -> str:  # refused when the config is read, not after training

        try:
            parse_sweep(text)
        except PeftlabError as exc:
            raise ValueError(str(exc).removeprefix(f"--sweep {text!r}: ")) from None
        return text

    @model_validator(mode="after")
    def _check(self) -> "ScenarioConfig":
        LoraParams(**{**self.lora, "method": "lora"})
        return self


@dataclass
class Module:
    """One LoRA to train: its data (train and per-epoch validation) and label names."""

    name: str
    train: Split
    val: Split
    labels: list[str]


@dataclass
class Row:
    """One line of the final table: an expression, scored on the test split."""

    label: str
    expression: str
    head: str = "average"
    mode: str = "parameter"

    @property
    def swept(self) -> bool:
        return "lambda" in self.expression


@dataclass
class Plan:
    modules: list[Module]
    rows: list[Row]
    val: Split  # chooses lambda
    test: Split  # reports
    labels: list[str]
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


SCENARIOS: Registry[Callable[[ScenarioConfig], Plan]] = Registry("composition scenario")


def _cap(idx: np.ndarray, labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A stratified subsample of ``idx`` (indices into ``labels``) of at most ``n``."""
    return idx if n is None else idx[stratified_indices(labels[idx], n, seed)]


def _splits(cfg: ScenarioConfig, cap: bool = True) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(task data, pool idx, val idx, test idx): val is held out of train, test is the task's eval."""
    data = load_task(TaskConfig(source="builtin", name=cfg.task), cfg.train.seed)
    pool, val = stratified_split(data.train.labels, cfg.val_fraction, cfg.train.seed)
    s = cfg.train.seed
    if cap:  # the analogy caps each domain instead
        pool = _cap(pool, data.train.labels, cfg.n_train, s)
        val = _cap(val, data.train.labels, cfg.n_val, s)
    test = _cap(np.arange(len(data.eval)), data.eval.labels, cfg.n_test, s)
    return data, pool, val, test


def _mixes(a: str, b: str) -> list[Row]:
    mix = f"(1 - lambda)*{a} + lambda*{b}"
    return [Row("mix (parameter)", mix), Row("mix (weight)", mix, mode="weight"),
            Row("sum (weight)", f"{a} + {b}", mode="weight")]


@SCENARIOS.register("generalisation")
def generalisation(cfg: ScenarioConfig) -> Plan:
    data, pool, val, test = _splits(cfg)
    tr = data.train.take(pool)
    ia, ib = sd.skewed_halves(tr.labels, cfg.skew, cfg.train.seed)
    vsplit = data.train.take(val)
    mods = [Module("part_a", tr.take(ia), vsplit, data.label_names),
            Module("part_b", tr.take(ib), vsplit, data.label_names),
            Module("all", tr, vsplit, data.label_names)]
    rows = [Row("part_a alone", "part_a"), Row("part_b alone", "part_b"), *_mixes("part_a", "part_b"),
            Row("trained on all", "all")]
    dist = {m.name: np.bincount(m.train.labels, minlength=data.num_labels).tolist() for m in mods}
    note = f"label counts per module ({', '.join(data.label_names)}): {dist}"
    return Plan(mods, rows, vsplit, data.eval.take(test), data.label_names, note)


@SCENARIOS.register("negation")
def negation(cfg: ScenarioConfig) -> Plan:
    data, pool, val, test = _splits(cfg)
    tr, vsplit, k = data.train.take(pool), data.train.take(val), data.num_labels

    def flipped(s: Split) -> Split:
        return Split(texts=s.texts, labels=sd.flip_labels(s.labels, k), pairs=s.pairs)

    mods = [Module("sent", tr, vsplit, data.label_names), Module("flip", flipped(tr), flipped(vsplit), data.label_names)]
    rows = [Row("sent alone", "sent"), Row("flip alone", "flip"),
            Row("sent - lambda*flip (parameter)", "sent - lambda*flip", head="sent"),
            Row("sent - lambda*flip (weight)", "sent - lambda*flip", head="sent", mode="weight")]
    names = data.label_names
    pairs = [f"{names[i]} <-> {names[k - 1 - i]}" for i in range(k // 2)] + ([f"{names[k // 2]} stays"] if k % 2 else [])
    note = f"flip is trained on reversed labels: {', '.join(pairs)}"
    return Plan(mods, rows, vsplit, data.eval.take(test), data.label_names, note)


@dataclass
class Domains:
    """Labelled splits of two domains: A (where the task is learnt) and B (where it is used)."""

    a_train: Split
    a_val: Split
    b_train: Split
    b_val: Split  # chooses lambda
    b_test: Split  # reports
    note: str


#: task -> how its data splits into two domains (from the task data and pool/val/test indices)
DOMAINS: Registry[Callable[[ScenarioConfig, Any, np.ndarray, np.ndarray, np.ndarray], Domains]] = Registry("analogy task")


@DOMAINS.register("drugreview")
def drug_condition_domains(cfg: ScenarioConfig, data: Any, pool: np.ndarray, val: np.ndarray, test: np.ndarray) -> Domains:
    """Domain A: reviews for the conditions in ``cfg.domain``; domain B: all other conditions."""
    cond_train, cond_test = sd.drug_conditions()
    if len(cond_train) != len(data.train) or len(cond_test) != len(data.eval):
        raise PeftlabError("drugreview: condition column does not line up with the task rows")
    in_a = np.isin(np.asarray(cond_train), cfg.domain)
    y, s = data.train.labels, cfg.train.seed
    pa, pb = _cap(pool[in_a[pool]], y, cfg.n_train, s), _cap(pool[~in_a[pool]], y, cfg.n_train, s)
    va, vb = _cap(val[in_a[val]], y, cfg.n_val, s), _cap(val[~in_a[val]], y, cfg.n_val, s)
    tb = test[~np.isin(np.asarray(cond_test)[test], cfg.domain)]
    if min(len(pa), len(pb), len(va), len(vb), len(tb)) == 0:
        raise PeftlabError(f"analogy: domain {cfg.domain} leaves an empty split; choose other conditions")
    t = data.train
    note = f"domain A = reviews for {cfg.domain}, domain B = reviews for the other conditions"
    return Domains(t.take(pa), t.take(va), t.take(pb), t.take(vb), data.eval.take(tb), note)


@DOMAINS.register("bbcnews")
def bbc_section_domains(cfg: ScenarioConfig, data: Any, pool: np.ndarray, val: np.ndarray, test: np.ndarray) -> Domains:
    """Domain A: article leads (headline + first paragraph); domain B: closing paragraphs.

    The training articles are halved (stratified): one half gives domain A's leads, the other
    domain B's closings, so no article is seen in both domains.
    """
    y, s = data.train.labels, cfg.train.seed
    half_a, half_b = stratified_split(y[pool], 0.5, s)
    pa, pb = _cap(pool[half_a], y, cfg.n_train, s), _cap(pool[half_b], y, cfg.n_train, s)
    va = vb = _cap(val, y, cfg.n_val, s)

    def section(split: Split, which: int) -> Split:
        return Split(texts=[sd.bbc_sections(t)[which] for t in split.texts], labels=split.labels)

    t = data.train
    note = "domain A = BBC article leads (headline + first paragraph), domain B = closing paragraphs of other articles"
    return Domains(section(t.take(pa), 0), section(t.take(va), 0), section(t.take(pb), 1), section(t.take(vb), 1),
                   section(data.eval.take(test), 1), note)


@SCENARIOS.register("analogy")
def analogy(cfg: ScenarioConfig) -> Plan:
    data, pool, val, test = _splits(cfg, cap=False)
    test = _cap(test, data.eval.labels, cfg.n_test, cfg.train.seed)
    d = DOMAINS.get(cfg.task)(cfg, data, pool, val, test)
    s, shuf, names = cfg.train.seed, sd.SHUFFLE_LABELS, data.label_names
    mods = [Module("task_a", d.a_train, d.a_val, names),
            Module("dom_a", sd.shuffle_task(d.a_train.texts, s), sd.shuffle_task(d.a_val.texts, s + 1), shuf),
            Module("dom_b", sd.shuffle_task(d.b_train.texts, s), sd.shuffle_task(d.b_val.texts, s + 1), shuf),
            Module("task_b", d.b_train, d.b_val, names)]
    expr = "task_a + lambda*(dom_b - dom_a)"
    rows = [Row("task_a alone (vanilla transfer)", "task_a"),
            Row("analogy (parameter)", expr, head="task_a"), Row("analogy (weight)", expr, head="task_a", mode="weight"),
            Row("task_b (in-domain reference)", "task_b")]
    note = (f"{d.note}: {len(d.a_train)} / {len(d.b_train)} train; lambda chosen on {len(d.b_val)} domain-B "
            f"validation examples, scored on {len(d.b_test)} domain-B test examples")
    return Plan(mods, rows, d.b_val, d.b_test, names, note)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> ScenarioConfig:
    raw = load_raw(path)
    apply_overrides(raw, overrides)
    try:
        return ScenarioConfig.model_validate(raw)
    except ValidationError as err:
        raise PeftlabError(f"scenario config error: {_format_error(err)}") from None


def is_scenario(path: str | Path) -> bool:
    """A compose-scenario config (``peftlab compose-scenario``), not an experiment config: it names a ``scenario``."""
    return "scenario" in load_raw(path)


def check_scenario(path: str | Path, overrides: list[str] | None = None) -> str:
    """``peftlab validate`` of a scenario config: its schema (sweep included), trackers and data
    splits (the plan), with no model loaded; returns the ok line (a problem is one PeftlabError)."""
    cfg = load_scenario(path, overrides)
    check_trackers(cfg.train.log_to)
    plan = SCENARIOS.get(cfg.scenario)(cfg)
    return (f"ok: {path} ({cfg.scenario} scenario on {cfg.task}: {len(plan.modules)} modules: "
            f"{', '.join(m.name for m in plan.modules)}; {len(plan.rows)} rows)")
