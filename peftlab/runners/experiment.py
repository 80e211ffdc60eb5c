"""Run every method of an experiment config on one task and write one comparison.

The data are loaded and tokenised once; each method gets a freshly loaded backbone with the
same seed, so rows differ only by the method and its hyperparameters. The output folder's rules
are in runners/output.py, each row's bookkeeping (shared with image runs) in runners/rows.py.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import DataCollatorWithPadding, set_seed

from peftlab.backbones.loaders import checkpoint_tensor, load_for_head, load_hf_config, load_tokenizer, method_load_kwargs
from peftlab.backbones.text_head import TEXT, attach, lm_of, mark, row_head, verbalizers_for
from peftlab.config import BackboneConfig, ExperimentConfig
from peftlab.infra.config_base import MethodParams
from peftlab.infra.errors import PeftlabError
from peftlab.infra.fingerprint import base_fingerprint
from peftlab.infra.guards import NEWLY_INITIALISED, newly_initialised, newly_initialised_warning, overlap_count, overlap_warning, warn
from peftlab.methods import METHODS
from peftlab.methods.base import DEFAULT_HEADS, last_head, refuse_kind
from peftlab.results.metrics import classification_metrics, is_collapsed
from peftlab.estimate.params import arch_spec, count_params
from peftlab.estimate.plan import check_fits, estimate_bytes, step_of
from peftlab.infra.registry import Registry
from peftlab.report.compare import write_comparison
from peftlab.results import EpochRecord, Predictions, RunResult, environment
from peftlab.runners.batching import Features, encode
from peftlab.runners.cached import fit_head
from peftlab.runners.checkpoint import clear_checkpoints
from peftlab.runners.drift import (TrunkLM, base_features, drift_record, lm_head_of, lm_loss_record, pooled_features,
                                   reference_lm_loss, visiting)
from peftlab.infra.distributed import is_main
from peftlab.runners.icl import run_icl
from peftlab.runners.lr_search import search_lr
from peftlab.runners.measure import PeakMemory
from peftlab.runners.output import ResumeMode, prepare_output, write_run_report
from peftlab.runners.rows import (ADAPTER_DIR, baseline_row, changed_since, checkpoint_plan, guarded, kept_or_run,
                                  overlap_flags, record_predictions, save_atomically, say, stop_if_diverged,
                                  trainable_fingerprint, trained_result_fields)
from peftlab.runners.seeds import run_seeds, single_seed
from peftlab.runners.sharded import is_sharded, refuse_unsupported, unsharded_copy, use_sharding, wrap_blocks
from peftlab.runners.train import CheckpointPlan, FitOutcome, device_type, fit, make_accelerator, train_precision
from peftlab.tasks import TaskData, load_task
from peftlab.infra.threads import warn_if_busy
from peftlab.infra.tracking import check_trackers


def preflight(cfg: ExperimentConfig) -> None:
    """Checks that need each row's backbone config (no weights): refuse before anything trains."""
    confs: dict[str, Any] = {}
    for params in cfg.methods:
        refuse_kind(METHODS.get(params.method), "text")  # a method that does not run on text (runs_on)
        bb = cfg.backbone_for(params)
        if bb.name not in confs:
            confs[bb.name] = load_hf_config(bb, num_labels=len(cfg.task.label_names or [0, 1]))
        conf = confs[bb.name]
        if METHODS.get(params.method).runner == "train":
            conf = mark(copy.copy(conf), row_head(cfg, params, conf, cfg.task.label_names))
        METHODS.get(params.method).check(params, arch_spec(conf), conf.model_type)
    check_trackers(cfg.train.log_to)


def head_details(head: str, spec: Any, label_names: list[str], mapping: Any) -> dict[str, Any]:
    """What an encoder-decoder row records of its head (encoders and decoders have one kind only)."""
    if spec is None or not spec.extra_stacks:
        return {}
    if head != TEXT:
        return {"head": head}
    return {"head": head, "verbalizers": dict(zip(label_names, verbalizers_for(label_names, mapping)))}


class Encodings:
    """Per backbone, built the first time a row needs them: its config, resolved once for the run
    (the task's label count; the memory plan and every row's precision read it), and its tokenizer
    and tokenised splits."""

    def __init__(self, cfg: ExperimentConfig, data: TaskData) -> None:
        self.cfg, self.data = cfg, data
        self._done: dict[str, tuple[Any, Features, Features]] = {}
        self._configs: dict[str, Any] = {}

    def config(self, bb: BackboneConfig) -> Any:
        """``bb``'s transformers config (no weights) with the task's labels, read once."""
        if bb.name not in self._configs:
            self._configs[bb.name] = load_hf_config(bb, num_labels=self.data.num_labels)
        return self._configs[bb.name]

    def get(self, bb: BackboneConfig) -> tuple[Any, Features, Features]:
        if bb.name not in self._done:
            tok = load_tokenizer(bb)
            n = self.cfg.train.max_length
            self._done[bb.name] = (tok, encode(tok, self.data.train, n), encode(tok, self.data.eval, n))
        return self._done[bb.name]


#: runner name (``Method.runner``) -> function(cfg, params, data, encodings, out, quiet) -> RunResult
RUNNERS: Registry[Callable[..., RunResult]] = Registry("runner")


#: Experiment runners by task modality, called as ``(cfg, quiet, resume, command)``; the text
#: runner is this module's own ``run_experiment``.
MODALITY_RUNNERS: Registry[Callable[..., list[RunResult]]] = Registry("task modality")
MODALITY_RUNNERS.add("image", lambda cfg, quiet, resume, command: import_module("peftlab.runners.image_experiment")
                     .run_image_experiment(cfg, quiet, resume, command))


def run_experiment(cfg: ExperimentConfig, quiet: bool = False, resume: ResumeMode = "auto",
                   command: list[str] | None = None) -> list[RunResult]:
    """Every method of ``cfg``; ``command`` is the command line that started it (for the report)."""
    if cfg.task.modality in MODALITY_RUNNERS:
        return MODALITY_RUNNERS.get(cfg.task.modality)(cfg, quiet, resume, command)
    preflight(cfg)
    data = load_task(cfg.task, cfg.train.seed)
    encodings = Encodings(cfg, data)
    if cfg.train.memory_check:  # before any weights are loaded or anything is written
        check_fits(cfg, data.num_labels, encodings.config)
    out, reuse = prepare_output(cfg, resume, command)
    say(quiet, f"task {data.name}: {len(data.train)} train / {len(data.eval)} eval, labels {data.label_names}")
    if is_main():  # even with --quiet: it says the timings are not the method's alone
        warn_if_busy()
    if overlap_count(data.train, data.eval):
        warn(overlap_warning(overlap_count(data.train, data.eval), len(data.eval)))
    if len(cfg.seed_list) > 1:
        results = run_seeds(cfg, out, lambda scfg, sout: run_methods(scfg, data, encodings, sout, reuse, quiet))
    else:
        results = run_methods(single_seed(cfg), data, encodings, out, reuse, quiet)
    if is_main():
        write_comparison(results, out)
        write_run_report(out, quiet)
    return results


def run_methods(cfg: ExperimentConfig, data: TaskData, encodings: Encodings, out: Path, reuse: bool,
                quiet: bool) -> list[RunResult]:
    """The baseline and every method with ``cfg.train.seed``, results in ``out/METHOD``."""
    results = [baseline_row(cfg, data, out)] if cfg.baseline else []
    for params in cfg.methods:
        runner = RUNNERS.get(METHODS.get(params.method).runner)
        results.append(kept_or_run(out, params, reuse, quiet, lambda: runner(cfg, params, data, encodings, out, quiet)))
    return results


def _train(method: Any, model: torch.nn.Module, params: MethodParams, spec: Any, cfg: ExperimentConfig,
           train_f: Features, eval_f: Features, collate: Any, acc: Any, quiet: bool,
           plan: CheckpointPlan | None = None) -> tuple[torch.nn.Module, FitOutcome]:
    tcfg = cfg.train if params.epochs is None else cfg.train.model_copy(update={"epochs": params.epochs})
    if method.caches_features:
        model.to(acc.device)
        head = model.get_submodule(last_head(model, spec))
        is_decoder = bool(spec.is_decoder) if spec is not None else False
        return model, fit_head(model, head, train_f, eval_f, collate, params.lr, tcfg, acc, is_decoder, params.label, quiet)
    if is_sharded(acc):
        wrap_blocks(acc, model)
    return fit(model, train_f, eval_f, collate, params.lr, tcfg, acc, params.label, quiet, plan,
               lambda name: method.lr_scale(params, name),
               lambda m, step, total: method.after_step(m, params, step, total))


def run_method(cfg: ExperimentConfig, params: MethodParams, data: TaskData, tokenizer: Any,
               train_f: Features, eval_f: Features, out: Path, quiet: bool,
               model_config: Callable[[], Any] | None = None) -> RunResult:
    """One trained row; ``model_config``: its backbone's config as the run resolved it (else read here)."""
    method = METHODS.get(params.method)
    return guarded(cfg, params, data, out, lambda base, mdir: _run_method(
        cfg, method, params, data, tokenizer, train_f, eval_f, mdir, base, quiet, model_config))


def _run_trained(cfg: ExperimentConfig, params: MethodParams, data: TaskData, encodings: Encodings,
                 out: Path, quiet: bool) -> RunResult:
    bb = cfg.backbone_for(params)
    return run_method(cfg, params, data, *encodings.get(bb), out, quiet, lambda: encodings.config(bb))


def _run_icl(cfg: ExperimentConfig, params: MethodParams, data: TaskData, encodings: Encodings,
             out: Path, quiet: bool) -> RunResult:
    bb_name = cfg.backbone_for(params).name
    say(quiet, f"== {params.label} ({params.method} on {bb_name})")
    method = METHODS.get(params.method)

    def work(base: RunResult, mdir: Path) -> RunResult:
        # LoRA leaves the base weights as they were, so the adapted LM still has its base's fingerprint
        save = (lambda m: save_atomically(method, m, params, mdir / ADAPTER_DIR, base_fingerprint(m, bb_name))
                ) if method.saves_adapter else None
        result = run_icl(cfg, method, params, data, base, quiet, save, lambda p: record_predictions(mdir, p))
        return result.model_copy(update={"adapter_path": f"{mdir.name}/{ADAPTER_DIR}"}) if save else result

    return guarded(cfg, params, data, out, work)


RUNNERS.add("train", _run_trained)
RUNNERS.add("icl", _run_icl)


def _run_method(cfg: ExperimentConfig, method: Any, params: MethodParams, data: TaskData, tokenizer: Any,
                train_f: Features, eval_f: Features, mdir: Path, base: RunResult, quiet: bool,
                model_config: Callable[[], Any] | None = None) -> RunResult:
    bb = cfg.backbone_for(params)
    precision, acc, collate = _setup(cfg, method, params, data, tokenizer, model_config)
    sharded = use_sharding(acc)
    search = None
    if cfg.search is not None:  # on held-out training data only; the full run below uses the best value
        search = search_lr(params, cfg.search, train_f, cfg.train.seed, cfg.train.batch_size,
                           lambda p, tr, va: _trial(cfg, method, p, data, tokenizer, tr, va, collate, acc),
                           lambda msg: say(quiet, msg))
        params = params.model_copy(update={"lr": search["chosen"]})
        set_seed(cfg.train.seed)
    say(quiet, f"== {params.label} ({params.method}, lr={params.lr:g})")
    overhead = psutil.Process().memory_info().rss if acc.device.type == "cpu" else 0  # in the measured peak
    with PeakMemory(acc.device) as mem:
        t0 = time.perf_counter()
        extra = method_load_kwargs(bb, method, params, data.num_labels)
        loading_info: dict[str, Any] = {}
        conf = (model_config or (lambda: load_hf_config(bb, num_labels=data.num_labels)))()
        head = row_head(cfg, params, conf, data.label_names)
        mapping = cfg.verbalizers_for(params)
        model = load_for_head(bb, head, data.label_names, tokenizer, extra, loading_info)
        fingerprint = base_fingerprint(model, bb.name)
        spec = arch_spec(model.config)
        estimate = estimate_bytes(params, spec, model.config, cfg.train.batch_size, cfg.train.max_length, overhead,
                                  acc.device.type, step_of(precision, acc.device.type))
        fresh = newly_initialised(loading_info, spec.head_modules if spec is not None else DEFAULT_HEADS)
        if fresh:
            warn(newly_initialised_warning(bb.name, fresh))
        # the base's features from this very load, before the method touches it (runners/drift.py);
        # not under head: text: drift pools a classifier's last hidden states, which the LM does not return
        base_x, drift_s = (base_features(model, eval_f, collate, cfg.train.eval_batch_size, acc.device)
                           if cfg.train.drift and not sharded and head != TEXT else (None, 0.0))
        lm, lm_s = _lm_before(cfg, bb, spec, model, tokenizer, acc.device, precision, sharded)
        drift_s += lm_s
        model = attach(method.prepare(model, params, spec), head, tokenizer, data.label_names, mapping)
        trainable, total = count_params(model)
        before = trainable_fingerprint(model)
        # sharded: no checkpoints (their optimizer state would be shards), a rerun restarts the method
        plan = None if sharded else checkpoint_plan(cfg, mdir, model, quiet)
        if sharded and cfg.train.checkpoints and not method.caches_features:
            say(quiet, "   FSDP: no checkpoints are written; an interrupted method restarts from scratch")
        model, outcome = _train(method, model, params, spec, cfg, train_f, eval_f, collate, acc, quiet, plan)
        trained = model
        model = unsharded_copy(trained, lambda: attach(method.prepare(
            load_for_head(bb, head, data.label_names, tokenizer, extra), params, spec), head, tokenizer,
            data.label_names, mapping))
        wall = time.perf_counter() - t0 - drift_s
    drift = (drift_record(base_x, pooled_features(acc.unwrap_model(model), eval_f, collate, cfg.train.eval_batch_size))
             if base_x is not None else None)
    lm_loss = (lm_loss_record(lm[1], reference_lm_loss(TrunkLM(acc.unwrap_model(model), lm[0]), tokenizer, acc.device,
                                                       lm[2], precision.autocast)) if lm is not None else None)
    d_train = method.derived_trainable(params, spec) if spec is not None else None
    d_total = method.derived_total(params, spec) if d_train is not None else None  # None: no formula
    agree = None if d_train is None else (d_train == trainable and d_total == total)
    flags = [f for f, on in (("nan_loss", outcome.nan_loss), ("params_unchanged", not changed_since(before, model)),
                             ("params_mismatch", agree is False), (NEWLY_INITIALISED, bool(fresh))) if on]
    flags += overlap_flags(data)
    assert outcome.logits is not None
    pred = outcome.logits.argmax(-1)
    if is_collapsed(pred, data.num_labels):
        flags.insert(0, "collapsed")
    stop_if_diverged(outcome, mdir)
    adapter_bytes = (save_atomically(method, lm_of(model), params, mdir / ADAPTER_DIR, fingerprint)
                     if acc.is_main_process else None)
    if acc.is_main_process:
        clear_checkpoints(mdir)
    m = classification_metrics(data.eval.labels, pred, data.label_names)
    record_predictions(mdir, Predictions.from_logits(data.label_names, data.eval.labels, outcome.logits))
    return base.model_copy(update=dict(
        **trained_result_fields(outcome, m, (trainable, total, d_train, d_total, agree), wall, mem),
        adapter_bytes=adapter_bytes, adapter_path=f"{mdir.name}/{ADAPTER_DIR}",
        flags=flags, environment=environment(str(acc.device), outcome.dropout), **precision.result_fields(),
        details={**base.details, **head_details(head, spec, data.label_names, mapping), "memory_estimate_bytes": estimate, "train_time_estimate_s": outcome.estimated_train_s, **({"lr_search": search} if search else {}), **({"fsdp_processes": acc.num_processes} if model is not trained else {}), **({"newly_initialised": fresh[:50], "newly_initialised_count": len(fresh)} if fresh else {}), **({"drift": drift} if drift else {}), **({"lm_loss": lm_loss} if lm_loss else {})},
    ))


def _lm_before(cfg: ExperimentConfig, bb: Any, spec: Any, model: torch.nn.Module, tokenizer: Any, device: torch.device,
               precision: Any, sharded: bool) -> tuple[tuple[torch.Tensor | None, dict[str, Any], int] | None, float]:
    """A causal backbone's classifier row: its trunk's LM loss on the reference text before the
    method touches it, with the LM head it is scored by and the context limit; and the seconds
    spent (not the method's cost). None for encoders, ``train.drift: false``, sharded runs, and an
    untied LM head the checkpoint does not hold."""
    if not cfg.train.drift or sharded or spec is None or not spec.is_decoder:
        return None, 0.0
    t0 = time.perf_counter()
    ok, head = lm_head_of(model.config, lambda key: checkpoint_tensor(bb, key))
    if not ok:
        return None, time.perf_counter() - t0
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    with visiting(model, device):
        before = reference_lm_loss(TrunkLM(model, head), tokenizer, device, limit, precision.autocast)
    return (head, before, limit or 0), time.perf_counter() - t0


def _setup(cfg: ExperimentConfig, method: Any, params: MethodParams, data: TaskData, tokenizer: Any,
           model_config: Callable[[], Any] | None = None) -> tuple[Any, Any, Any]:
    """(precision, accelerator, collator) of one row, seeded: shared by the run and a search alone.
    ``model_config``: the row's backbone config as the run resolved it; None: read it here."""
    set_seed(cfg.train.seed)
    refuse_unsupported(method)  # before accelerate reads the launcher's FSDP/DeepSpeed settings
    bb = cfg.backbone_for(params)
    precision = train_precision(cfg.train, model_config or (lambda: load_hf_config(bb, num_labels=data.num_labels)),
                                method.keeps_fp32(params, device_type(cfg.train)))
    acc = make_accelerator(cfg.train, precision)
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if acc.device.type == "cuda" else None)
    return precision, acc, collate


def search_method(cfg: ExperimentConfig, params: MethodParams, data: TaskData, encodings: Encodings,
                  quiet: bool = True) -> dict[str, Any]:
    """``cfg.search`` for one row without its full run: the record a run stores as
    ``details.lr_search`` (bench/method_defaults.py chooses the methods' default learning rates
    with it). Trials train on part of the training split and are scored on the rest."""
    if cfg.search is None:
        raise PeftlabError("search_method: the config has no search block")
    method = METHODS.get(params.method)
    bb = cfg.backbone_for(params)
    tokenizer, train_f, _ = encodings.get(bb)
    precision, acc, collate = _setup(cfg, method, params, data, tokenizer, lambda: encodings.config(bb))
    record = search_lr(params, cfg.search, train_f, cfg.train.seed, cfg.train.batch_size,
                       lambda p, tr, va: _trial(cfg, method, p, data, tokenizer, tr, va, collate, acc),
                       lambda msg: say(quiet, msg))
    return {**record, **precision.result_fields()}


def _trial(cfg: ExperimentConfig, method: Any, params: MethodParams, data: TaskData, tokenizer: Any,
           train_f: Features, val_f: Features, collate: Any, acc: Any) -> EpochRecord | None:
    """One search trial: a fresh model, ``params`` (the trial's lr and epochs), scored on ``val_f``."""
    set_seed(cfg.train.seed)
    bb = cfg.backbone_for(params)
    head = row_head(cfg, params, load_hf_config(bb, num_labels=data.num_labels), data.label_names)
    model = load_for_head(bb, head, data.label_names, tokenizer, method_load_kwargs(bb, method, params, data.num_labels))
    spec = arch_spec(model.config)
    model = attach(method.prepare(model, params, spec), head, tokenizer, data.label_names, cfg.verbalizers_for(params))
    _, outcome = _train(method, model, params, spec, cfg, train_f, val_f, collate, acc, True)
    return None if outcome.nan_loss or not outcome.epochs else outcome.epochs[-1]


