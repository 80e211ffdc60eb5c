"""Preflight estimates: will each method fit, before any weights are loaded?

Everything here comes from the backbone's config (no weights) and the closed forms of
:mod:`peftlab.estimate.params`. Per method:

* parameter memory of the base at fp32 / bf16 / 8-bit / 4-bit (bitsandbytes quantises the
  linear layers' weights only: 8-bit stores one byte per weight plus an fp32 scale per output
  row; 4-bit NF4 half a byte per weight plus an fp32 absmax per block of 64; the rest stays fp32),
* trainable parameters, their gradients and AdamW's two fp32 moments (gradients fill while the
  kept activations are freed, so the total holds only the larger of the two),
* activations kept for the backward pass, counted op by op by :mod:`peftlab.estimate.activations` (BERT,
  RoBERTa, XLM-R) and :mod:`peftlab.estimate.activations_decoder` (Llama, Mistral): what autograd saves
  given which tensors need a gradient (frozen blocks below the first trainable tensor keep
  nothing, LoRA keeps each adapted layer's input and with dropout a dropped copy and mask,
  attention keeps its T x T probabilities on CPU when it has dropout), plus the gradient buffers
  of one block's backward. A family without a walk would use the rough rule
  ``B*L*(10*h + 2*i) + 2*B*heads*L^2`` fp32 values per layer. Methods that train a head on cached
  features only run the forward pass, one layer's worth at a time (the same rough rule). The
  count follows the step as the row will compute it (:func:`training_step`): the precision the
  run resolves ``train.mixed_precision`` to (under bf16/fp16 autocast the linears keep 2-byte
  copies of their inputs and weights, norms and residuals stay fp32), the device's attention (a
  CPU's math path with dropout keeps the T x T probabilities; CUDA's fused kernel keeps none) and
  dropout masks (CUDA: bool), and on a CPU peftlab's dropout sampler and LoRA casts
  (peftlab.backbones.cpu_train). Under autocast, methods the walk does not follow op by op there
  (DoRA, VeRA's side branches, LoHa/LoKr weight deltas, HRA, p-tuning's LSTM encoder) keep their
  fp32 count, an upper bound that ``peftlab plan`` names,
* on CPU an allocator allowance of one more copy of the activations: glibc's malloc keeps freed
  activation blocks (after the first free its mmap threshold rises to 32 MB, so later tensors come
  from a fragmenting heap). Measured on MiniLM-L6 (bench/memory.py) it held 0.5-1.0x the kept
  activations on top of the live tensors; with a fixed mmap threshold it vanished. This term is an
  upper bound from that measurement, not a count. On CUDA the measured peak is allocated tensors,
  so no allowance,
* on CPU the process's own memory now (Python, torch, the tokenizer), since the measured peak is
  the process's resident set; on CUDA the measured peak is allocated tensors only.

The total is a planning number: tests hold it within a factor of 2 of the measured peak, and the
activation count within a few per cent of what autograd saves (tests/test_activations.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from peftlab.config import BackboneConfig, ExperimentConfig
from peftlab.infra.config_base import MethodParams
from peftlab.infra.errors import PeftlabError
from peftlab.estimate.params import all_linears, arch_spec, ArchSpec, num_blocks, total_params
from peftlab.backbones import dropout
from peftlab.backbones.loaders import load_hf_config
from peftlab.backbones.precision import resolve, shapes_of
from peftlab.estimate.activation_flows import has_walk, training_step_bytes
from peftlab.estimate.activations import Step, autocast_counted
from peftlab.methods import METHODS
from peftlab.tasks import load_task

FP32 = 4
#: the factor the estimate is held to against the measured peak (tests/test_plan.py)
STATED_FACTOR = 2.0
#: share of the free memory a run may plan to use (the rest is slack for the allocator, the OS)
USABLE = 0.9
MB = 2**20


def linear_weight_count(spec: ArchSpec) -> tuple[int, int]:
    """(weights of the backbone's linear layers, their output rows): what bitsandbytes quantises."""
    layers = all_linears(spec).values()
    return sum(d_in * d_out for d_in, d_out, _ in layers), sum(d_out for _, d_out, _ in layers)


def base_bytes(spec: ArchSpec, precision: str) -> int:
    """Bytes of the plain classification model's parameters at ``precision`` (fp32 exact)."""
    total = total_params(spec)
    if precision == "fp32":
        return FP32 * total
    if precision == "bf16":
        return 2 * total
    weights, rows = linear_weight_count(spec)
    rest = FP32 * (total - weights)
    if precision == "8-bit":
        return weights + FP32 * rows + rest
    if precision == "4-bit":
        return weights // 2 + FP32 * -(-weights // 64) + rest
    raise ValueError(f"unknown precision {precision!r}")


PRECISIONS = ("fp32", "bf16", "8-bit", "4-bit")


def method_precision(params: MethodParams) -> str:
    """How the method loads its base: ``qlora`` quantised by its ``bits``, every other method fp32."""
    bits = getattr(params, "bits", None)
    return {4: "4-bit", 8: "8-bit"}.get(bits, "fp32") if bits else "fp32"


def rough_activation_bytes(spec: ArchSpec, conf: Any, batch: int, length: int, backward: bool) -> int:
    """Activations of one step by a fixed rule; all layers' when the backward pass needs them, else
    one layer's (a forward under no_grad frees each layer's tensors before the next). Every stack's
    blocks count (an encoder-decoder's decoder too; its cross-attention is not counted apart)."""
    h = spec.hidden
    inter = int(getattr(conf, "intermediate_size", None) or getattr(conf, "d_ff", None) or 4 * h)
    heads = int(getattr(conf, "num_attention_heads", 1) or 1)
    per_layer = batch * length * (10 * h + 2 * inter) + 2 * batch * heads * length * length
    embeddings = batch * length * h
    return FP32 * (embeddings + per_layer * (num_blocks(spec) if backward else 1))


@dataclass
class MethodPlan:
    label: str
    method: str
    precision: str
    base: dict[str, int]  # bytes of the base at each precision
    trainable: int
    total: int
    weights_bytes: int  # the base at the method's precision plus the method's own fp32 tensors
    grads_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    overhead_bytes: int
    #: CPU only: freed activation memory the allocator keeps (see the module docstring)
    allocator_bytes: int = 0
    device: str = "cpu"
    #: the backbone this row is planned on (the row's own, else the experiment's)
    backbone: str = ""
    #: how its training step computes (device, autocast, CPU dropout sampler): what the count follows
    step: Step = field(default_factory=Step)
    #: under autocast, whether the count follows the method op by op (else its fp32 count, an upper bound)
    counted_in_precision: bool = True

    @property
    def total_bytes(self) -> int:
        """Gradients are allocated during the backward pass while the kept activations are freed
        (the top block's first), so at the peak only the larger of the two is held."""
        return (self.weights_bytes + self.optimizer_bytes + max(self.grads_bytes, self.activation_bytes)
                + self.allocator_bytes + self.overhead_bytes)

    @property
    def new_bytes(self) -> int:
        """What the method adds on top of what the process already holds."""
        return self.total_bytes - self.overhead_bytes


@dataclass
class Plan:
    device: str
    available_bytes: int
    methods: list[MethodPlan] = field(default_factory=list)
    #: label -> reason no estimate exists (no closed form for the architecture, image task)
    skipped: dict[str, str] = field(default_factory=dict)
    #: backbone name -> (its closed-form spec or None, its transformers config), loaded once each
    backbones: dict[str, tuple[ArchSpec | None, Any]] = field(default_factory=dict, repr=False)


class NoEstimate(Exception):
    """The method has no closed-form parameter count: it is listed without an estimate."""


def activation_bytes(method: Any, params: MethodParams, spec: ArchSpec, conf: Any, batch: int,
                     length: int, step: Step) -> int:
    """One training step's activations as ``step`` computes it: counted op by op from the method's
    flow where the family is known, else the rough rule (fp32)."""
    counted = None if method.caches_features else training_step_bytes(
        method.flow(params, spec), spec, conf, batch, length, step)
    if counted is None:
        return rough_activation_bytes(spec, conf, batch, length, backward=not method.caches_features)
    return sum(counted)


def training_step(precision: str, device: str, method: Any, params: MethodParams, conf: Any, tokens: int,
                  env: Mapping[str, str] | None = None) -> Step:
    """How a row's training step will compute: ``train.mixed_precision`` resolved as the run resolves
    it (peftlab.backbones.precision; on a CPU ``auto`` reads the cached matmul probe at the model's
    shapes), and on a CPU whether peftlab's dropout sampler will train (its cached probe)."""
    keep = method.keeps_fp32(params, device)
    return step_of(resolve(precision, device, lambda: shapes_of(conf, tokens), keep, env), device, env)


def step_of(precision: Any, device: str, env: Mapping[str, str] | None = None) -> Step:
    """The step of a row whose precision is resolved (a peftlab.backbones.precision.Precision)."""
    return Step(device=device, autocast=precision.dtype != "fp32",
                bits_dropout=device == "cpu" and dropout.choose(device, env)[0])


def plan_method(params: MethodParams, spec: ArchSpec, conf: Any, batch: int, length: int,
                overhead: int, device: str = "cpu", step: Step | None = None) -> MethodPlan:
    """``step``: how the training step computes (default: fp32 on ``device``)."""
    step = step or Step(device=device)
    method = METHODS.get(params.method)
    try:
        trainable = method.derived_trainable(params, spec)
        total = method.derived_total(params, spec)
    except NotImplementedError:
        raise NoEstimate(f"no closed form for method {params.method!r}") from None
    if trainable is None or total is None:  # the method declares it has none (the generic peft row)
        raise NoEstimate(f"no closed form for method {params.method!r}")
    precision = method_precision(params)
    added = total - total_params(spec)  # the method's own tensors (adapters, the head copy peft trains)
    acts = activation_bytes(method, params, spec, conf, batch, length, step)
    return MethodPlan(
        label=params.label, method=params.method, precision=precision,
        base={p: base_bytes(spec, p) for p in PRECISIONS}, trainable=trainable, total=total,
        weights_bytes=base_bytes(spec, precision) + FP32 * added,
        grads_bytes=FP32 * trainable, optimizer_bytes=2 * FP32 * trainable,
        activation_bytes=acts, allocator_bytes=acts if device == "cpu" else 0, overhead_bytes=overhead,
        device=device, step=step,
        counted_in_precision=not step.autocast or autocast_counted(method.flow(params, spec)),
    )


def device_memory(cfg: ExperimentConfig) -> tuple[str, int, int]:
    """(device, free bytes, bytes the process already holds that the measured peak includes)."""
    import torch

    if cfg.train.device != "cpu" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return "cuda", int(free), 0
    return "cpu", int(psutil.virtual_memory().available), int(psutil.Process().memory_info().rss)


def task_labels(cfg: ExperimentConfig) -> int:
    """The number of labels (it sizes the head): from the config, else from the data (no model needed)."""
    if cfg.task.label_names:
        return len(cfg.task.label_names)

    return load_task(cfg.task, cfg.train.seed).num_labels


def make_plan(cfg: ExperimentConfig, num_labels: int | None = None,
              config_of: Callable[[BackboneConfig], Any] | None = None,
              env: Mapping[str, str] | None = None) -> Plan:
    """Estimates for every method of ``cfg``, each on its own backbone (``cfg.backbone_for``), from the
    backbones' configs alone (and the label count). ``config_of``: a backbone's config as the run
    has already resolved it (with ``num_labels`` labels), instead of reading it again."""
    device, free, overhead = device_memory(cfg)
    plan = Plan(device=device, available_bytes=free)
    if cfg.task.modality != "text":
        plan.skipped = {m.label: "image tasks have no closed-form estimate yet" for m in cfg.methods}
        return plan
    labels = num_labels or task_labels(cfg)
    for params in cfg.methods:
        bb = cfg.backbone_for(params)
        if bb.name not in plan.backbones:
            conf = config_of(bb) if config_of is not None else load_hf_config(bb, num_labels=labels)
            plan.backbones[bb.name] = (arch_spec(conf), conf)
        spec, conf = plan.backbones[bb.name]
        if spec is None:
            plan.skipped[params.label] = f"no closed form for architecture {conf.model_type!r}"
            continue
        tcfg = cfg.train
        try:
            step = training_step(tcfg.mixed_precision, device, METHODS.get(params.method), params, conf,
                                 tcfg.batch_size * tcfg.max_length, env)
            mp = plan_method(params, spec, conf, tcfg.batch_size, tcfg.max_length, overhead, device, step)
        except NoEstimate as exc:
            plan.skipped[params.label] = str(exc)
            continue
        mp.backbone = bb.name
        plan.methods.append(mp)
    return plan


def estimate_bytes(params: MethodParams, spec: ArchSpec | None, conf: Any, batch: int, length: int,
                   overhead: int, device: str = "cpu", step: Step | None = None) -> int | None:
    """The total estimate for one method, recorded next to its measured peak (None: no closed form)."""
    if spec is None:
        return None
    try:
        return plan_method(params, spec, conf, batch, length, overhead, device, step).total_bytes
    except NoEstimate:
        return None


def fits(mp: MethodPlan, available: int) -> bool:
    return mp.new_bytes <= USABLE * available


def alternatives(mp: MethodPlan, cfg: ExperimentConfig, spec: ArchSpec, conf: Any, available: int) -> list[str]:
    """Settings that would bring this method under the free memory, in the order to try them."""
    out = []
    tcfg = cfg.train

    def with_(precision: str, batch: int, length: int) -> MethodPlan:
        alt = plan_method(cfg.method(mp.label), spec, conf, batch, length, mp.overhead_bytes, mp.device, mp.step)
        if precision != alt.precision:
            extra = alt.weights_bytes - base_bytes(spec, alt.precision)
            alt.weights_bytes, alt.precision = base_bytes(spec, precision) + extra, precision
        return alt

    if mp.precision != "4-bit" and fits(with_("4-bit", tcfg.batch_size, tcfg.max_length), available):
        out.append("a 4-bit base (method: qlora)")
    batch = tcfg.batch_size // 2
    while batch >= 1:
        if fits(with_(mp.precision, batch, tcfg.max_length), available):
            accum = -(-tcfg.batch_size * tcfg.grad_accum // batch)
            out.append(f"train.batch_size={batch} with train.grad_accum={accum} (same effective batch)")
            break
        batch //= 2
    length = tcfg.max_length // 2
    while length >= 8:
        if fits(with_(mp.precision, tcfg.batch_size, length), available):
            out.append(f"train.max_length={length}")
            break
        length //= 2
    return out


def check_fits(cfg: ExperimentConfig, num_labels: int | None = None,
               config_of: Callable[[BackboneConfig], Any] | None = None) -> Plan:
    """Stop before loading any weights when a method's estimate (on its own backbone) exceeds the
    free memory (``config_of`` as for :func:`make_plan`)."""
    plan = make_plan(cfg, num_labels, config_of)
    too_big = [mp for mp in plan.methods if not fits(mp, plan.available_bytes)]
    if too_big:
        mp = too_big[0]
        spec, conf = plan.backbones[mp.backbone]
        assert spec is not None  # methods are planned only with a closed form
        options = alternatives(mp, cfg, spec, conf, plan.available_bytes)
        raise PeftlabError(
            f"method {mp.label}{f' (on {mp.backbone})' if len(plan.backbones) > 1 else ''} needs about {mp.new_bytes / MB:.0f} MB but {plan.device} has "
            f"{plan.available_bytes / MB:.0f} MB free; would fit: {'; '.join(options) or 'none of a 4-bit base, a smaller batch or shorter sequences'}"
            f" (or train.memory_check=false to try anyway)")
    return plan


def format_plan(plan: Plan, cfg: ExperimentConfig) -> str:
    """The ``peftlab plan`` table: one row per method, megabytes; a backbone column when rows differ in it."""
    per_row = len(plan.backbones) > 1
    heads = ["method", *(["backbone"] if per_row else []), "base fp32", "bf16", "8-bit", "4-bit", "loads as",
             "computes", "trainable", "weights", "grads", "optimizer", "activations", "allocator", "process", "total", "fits"]
    rows = []
    for mp in plan.methods:
        rows.append([mp.label, *([mp.backbone] if per_row else []), *(f"{mp.base[p] / MB:.1f}" for p in PRECISIONS),
                     mp.precision, "autocast" if mp.step.autocast else "fp32", f"{mp.trainable:,}",
                     *(f"{b / MB:.1f}" for b in (mp.weights_bytes, mp.grads_bytes, mp.optimizer_bytes,
                                                 mp.activation_bytes, mp.allocator_bytes, mp.overhead_bytes,
                                                 mp.total_bytes)),
                     "yes" if fits(mp, plan.available_bytes) else "NO"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
    lines = [f"plan for {cfg.name}: batch {cfg.train.batch_size} x length {cfg.train.max_length}, {plan.device} "
             f"with {plan.available_bytes / MB:.0f} MB free (MB = 2^20 bytes)",
             "  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines += [f"{label}: no estimate ({why})" for label, why in plan.skipped.items()]
    lines += [f"{mp.label}: activations counted as in fp32 (an upper bound: the count does not follow "
              f"{mp.method} under autocast op by op)" for mp in plan.methods if not mp.counted_in_precision]
    rough = sorted({name for name, (spec, _) in plan.backbones.items() if spec is not None and not has_walk(spec)})
    lines += [f"{name}: activations by the rough rule (no op-by-op count for {plan.backbones[name][0].family!r}), "
              f"a rough estimate" for name in rough]
    lines.append(f"total = weights + optimizer (AdamW, 2 fp32 moments) + the larger of grads and activations "
                 f"(what autograd keeps, counted per op; freed as grads fill) + allocator (CPU: freed blocks malloc keeps, up to one more copy of the "
                 f"activations) + process; held within {STATED_FACTOR:g}x of the measured peak; 'fits' compares "
                 f"total minus process with {USABLE:.0%} of the free memory.")
    return "\n".join(lines)
