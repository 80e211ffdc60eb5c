"""Run every method of an experiment config on one task and write one comparison.

The data are loaded and tokenised once; each method gets a freshly loaded backbone with the
same seed, so rows differ only by the method and its hyperparameters.
"""

from __future__ import annotations

import shutil
import sys
import time
import traceback
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil
import torch
from transformers import DataCollatorWithPadding, set_seed

from peftlab.backbones import load_classifier, load_hf_config, load_tokenizer, method_load_kwargs
from peftlab.config import BackboneConfig, ExperimentConfig, dump_config
from peftlab.config_base import MethodParams
from peftlab.errors import PeftlabError
from peftlab.fingerprint import base_fingerprint, write_fingerprint
from peftlab.guards import NEWLY_INITIALISED, newly_initialised, newly_initialised_warning, overlap_count, overlap_warning, warn
from peftlab.io import atomic_write_json, atomic_write_text, dir_size_bytes
from peftlab.launcher import launcher_record
from peftlab.methods import METHODS
from peftlab.methods.base import DEFAULT_HEADS, head_names
from peftlab.metrics import classification_metrics, is_collapsed, majority_class
from peftlab.params import arch_spec, count_params
from peftlab.plan import check_fits, estimate_bytes
from peftlab.registry import Registry
from peftlab.report.collect import COMMAND_FILE
from peftlab.report.compare import write_comparison
from peftlab.results import RESULTS_FILE, EpochRecord, ParamCounts, RunResult, Timing, environment, read_result
from peftlab.runners.batching import Features, encode
from peftlab.runners.cached import fit_head
from peftlab.runners.icl import run_icl
from peftlab.runners.lr_search import search_lr
from peftlab.runners.measure import PeakMemory
from peftlab.runners.seeds import run_seeds, single_seed
from peftlab.runners.distributed import barrier, is_main
from peftlab.runners.sharded import is_sharded, refuse_unsupported, unsharded_copy, use_sharding, wrap_blocks
from peftlab.runners.distributed import start as start_distributed
from peftlab.threads import apply_threads, load_at_start, warn_if_busy
from peftlab.runners.checkpoint import clear_checkpoints, complete_checkpoints, load_checkpoint
from peftlab.runners.train import CheckpointPlan, FitOutcome, fit, make_accelerator
from peftlab.tasks import TaskData, load_task
from peftlab.tracking import check_trackers, log_result

ADAPTER_DIR = "adapter"
BASELINE = "majority_class"
#: whole-run summaries, rewritten at the end of every run
COMPARISON_FILES = ("comparison.md", "comparison.csv", "report.md", "report.html")


def preflight(cfg: ExperimentConfig) -> None:
    """Checks that need each row's backbone config (no weights): refuse before anything trains."""
    confs: dict[str, Any] = {}
    for params in cfg.methods:
        bb = cfg.backbone_for(params)
        if bb.name not in confs:
            confs[bb.name] = load_hf_config(bb, num_labels=len(cfg.task.label_names or [0, 1]))
        METHODS.get(params.method).check(params, arch_spec(confs[bb.name]), confs[bb.name].model_type)
    check_trackers(cfg.train.log_to)


class Encodings:
    """Tokenizer and tokenised splits per backbone, built the first time a row needs them."""

    def __init__(self, cfg: ExperimentConfig, data: TaskData) -> None:
        self.cfg, self.data = cfg, data
        self._done: dict[str, tuple[Any, Features, Features]] = {}

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


ResumeMode = Literal["auto", "resume", "fresh"]


def decide_resume(out: Path, config_text: str, mode: ResumeMode) -> bool:
    """Whether to continue the run already in ``out``: only ever for the very same config.

    ``auto`` (re-running the same command) continues when ``out`` holds this config, and starts
    over otherwise; ``resume`` insists on continuing; ``fresh`` always starts over.
    """
    previous = out / "config.yaml"
    same = previous.is_file() and previous.read_text(encoding="utf-8") == config_text
    if mode == "resume" and not previous.is_file():
        raise PeftlabError(f"--resume: {out} holds no run to resume (no config.yaml)")
    if mode == "resume" and not same:
        raise PeftlabError(f"--resume: {previous} is a different config; resuming needs the same one (drop --resume to start over)")
    return same and mode != "fresh"


def prepare_output(cfg: ExperimentConfig, resume: ResumeMode = "fresh",
                   command: list[str] | None = None) -> tuple[Path, bool]:
    """Create the run folder, store the resolved config in it, set the torch threads (peftlab.threads).

    Returns the folder and whether the run already in it is continued (see ``decide_resume``).
    Under ``accelerate launch`` every process decides before rank 0 alone changes the folder.
    """
    out = Path(cfg.output_dir)
    config_text = dump_config(cfg)
    apply_threads(cfg.train.num_threads)
    start_distributed(cfg.train.device == "cpu")
    try:
        reuse = decide_resume(out, config_text, resume)
        barrier()
        if not is_main():
            return out, reuse
        out.mkdir(parents=True, exist_ok=True)
        for stale in COMPARISON_FILES:  # rewritten at the end: never left looking complete meanwhile
            (out / stale).unlink(missing_ok=True)
        atomic_write_text(out / "config.yaml", config_text)
        if command:
            launcher = launcher_record()  # accelerate launch / torchrun: what the re-run line needs
            atomic_write_json(out / COMMAND_FILE, {"argv": command, "cwd": str(Path.cwd()),
                                                   **({"launcher": launcher} if launcher else {})})
    except OSError as exc:
        raise PeftlabError(f"output_dir {out}: cannot write ({exc.strerror or exc})") from None
    return out, reuse


def run_experiment(cfg: ExperimentConfig, quiet: bool = False, resume: ResumeMode = "auto",
                   command: list[str] | None = None) -> list[RunResult]:
    """Every method of ``cfg``; ``command`` is the command line that started it (for the report)."""
    if cfg.task.modality in MODALITY_RUNNERS:
        return MODALITY_RUNNERS.get(cfg.task.modality)(cfg, quiet, resume, command)
    preflight(cfg)
    data = load_task(cfg.task, cfg.train.seed)
    if cfg.train.memory_check:  # before any weights are loaded or anything is written
        check_fits(cfg, data.num_labels)
    out, reuse = prepare_output(cfg, resume, command)
    encodings = Encodings(cfg, data)
    _say(quiet, f"task {data.name}: {len(data.train)} train / {len(data.eval)} eval, labels {data.label_names}")
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
    results = [baseline_result(cfg, data)] if cfg.baseline else []
    if results and is_main():
        results[0].write(out / BASELINE)
    for params in cfg.methods:
        runner = RUNNERS.get(METHODS.get(params.method).runner)
        results.append(kept_or_run(out, params, reuse, quiet, lambda: runner(cfg, params, data, encodings, out, quiet)))
    return results


def kept_or_run(out: Path, params: MethodParams, reuse: bool, quiet: bool, run: Callable[[], RunResult]) -> RunResult:
    """One row of a run (text or image): kept if an earlier run of this config finished it, else
    ``run()``, which resumes from the row's checkpoints when the run is continued (``reuse``)."""
    done = finished_result(out / params.label, params) if reuse else None
    if done is not None:
        _say(quiet, f"== {params.label}: finished in an earlier run, kept")
        return done
    if not reuse and is_main():
        clear_checkpoints(out / params.label)
    barrier()  # every process looks for checkpoints after rank 0 cleared them
    return run()


def finished_result(mdir: Path, params: MethodParams) -> RunResult | None:
    """The result of an earlier run of this very method if it ended well, else None."""
    path = mdir / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        result = read_result(path)
    except PeftlabError:
        return None
    same = result.method_params == params.model_dump(mode="json")
    saved = result.adapter_path is None or (mdir / ADAPTER_DIR).is_dir()  # in-context rows save nothing
    return result if same and result.status == "ok" and saved else None


def write_run_report(out: Path, quiet: bool) -> None:
    """report.md / report.html beside the results; results are already safe if this fails."""
    from peftlab.report.write import write_report

    try:
        _, html = write_report([out], out)
        _say(quiet, f"report: {html}")
    except Exception as exc:  # a report bug must not turn a finished run into a failed one
        traceback.print_exc()
        print(f"error: report not written ({exc}); retry with: peftlab report {out}", file=sys.stderr)


def _say(quiet: bool, msg: str) -> None:
    if not quiet and is_main():
        print(msg, file=sys.stderr, flush=True)


def baseline_result(cfg: ExperimentConfig, data: TaskData) -> RunResult:
    """Always answer the most frequent training class: the floor every method must beat."""
    pred = np.full(len(data.eval), majority_class(data.train.labels))
    m = classification_metrics(data.eval.labels, pred, data.label_names)
    return RunResult(
        name=BASELINE, method=BASELINE, task=data.name, backbone="-", seed=cfg.train.seed,
        labels=data.label_names, n_train=len(data.train), n_eval=len(data.eval),
        accuracy=m["accuracy"], macro_f1=m["macro_f1"], per_class=m["per_class"],
        confusion_matrix=m["confusion_matrix"], params=ParamCounts(trainable=0, total=0, percent_trainable=0.0),
        flags=(["collapsed"] if is_collapsed(pred, data.num_labels) else []) + overlap_flags(data),
        details=overlap_details(data),
    )


def overlap_details(data: TaskData) -> dict[str, Any]:
    """Recorded in every result: evaluation examples whose input also occurs in training."""
    return {"train_eval_overlap": overlap_count(data.train, data.eval)}


def overlap_flags(data: TaskData) -> list[str]:
    return ["train_eval_overlap"] if overlap_count(data.train, data.eval) else []


def _fingerprint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A slice of every trainable tensor: enough to tell whether training moved it."""
    return {n: p.detach().flatten()[:4096].float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = dict(model.named_parameters())
    return any(not torch.equal(v, after[n].detach().flatten()[:4096].float().cpu()) for n, v in before.items() if n in after)


class NonFiniteLoss(PeftlabError):
    """Training diverged: the method stops and its result is marked ``nan_loss``."""


def stop_if_diverged(outcome: FitOutcome, mdir: Path) -> None:
    """Nothing is saved from a diverged model; the last good checkpoint stays for inspection."""
    if outcome.nan_loss:
        kept = f"; last good checkpoint kept in {mdir / 'checkpoints'}" if complete_checkpoints(mdir) else ""
        raise NonFiniteLoss(f"training loss became NaN/inf in epoch {len(outcome.epochs)}; method stopped{kept}")


def checkpoint_plan(cfg: ExperimentConfig, mdir: Path, model: torch.nn.Module, quiet: bool) -> CheckpointPlan | None:
    """Checkpointing for this method, resuming from its newest complete checkpoint if there is one."""
    if not cfg.train.checkpoints:
        return None
    plan = CheckpointPlan(mdir, every=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints)
    found = complete_checkpoints(mdir)
    if found:
        plan.resume = load_checkpoint(found[-1], model)
        _say(quiet, f"   resuming from {found[-1].name} (epoch {plan.resume.progress.epoch}, "
                    f"{plan.resume.progress.batches_done} batches done)")
    return plan


def _train(method: Any, model: torch.nn.Module, params: MethodParams, spec: Any, cfg: ExperimentConfig,
           train_f: Features, eval_f: Features, collate: Any, acc: Any, quiet: bool,
           plan: CheckpointPlan | None = None) -> tuple[torch.nn.Module, FitOutcome]:
    tcfg = cfg.train if params.epochs is None else cfg.train.model_copy(update={"epochs": params.epochs})
    if method.caches_features:
        heads = head_names(model, spec)
        if len(heads) != 1:
            raise PeftlabError(f"{method.name}: needs a single head module, found {heads}")
        model.to(acc.device)
        head = model.get_submodule(heads[0])
        is_decoder = bool(spec.is_decoder) if spec is not None else False
        return model, fit_head(model, head, train_f, eval_f, collate, params.lr, tcfg, acc, is_decoder, params.label, quiet)
    if is_sharded(acc):
        wrap_blocks(acc, model)
    return fit(model, train_f, eval_f, collate, params.lr, tcfg, acc, params.label, quiet, plan)


def run_method(cfg: ExperimentConfig, params: MethodParams, data: TaskData, tokenizer: Any,
               train_f: Features, eval_f: Features, out: Path, quiet: bool) -> RunResult:
    method = METHODS.get(params.method)
    return guarded(cfg, params, data, out, lambda base, mdir: _run_method(
        cfg, method, params, data, tokenizer, train_f, eval_f, mdir, base, quiet))


def base_result(cfg: ExperimentConfig, params: MethodParams, data: TaskData) -> RunResult:
    """What a row's result holds before it runs (and keeps if it fails)."""
    return RunResult(
        name=params.label, method=params.method, method_params=params.model_dump(mode="json"),
        task=data.name, backbone=cfg.backbone_for(params).name, seed=cfg.train.seed, labels=data.label_names,
        n_train=len(data.train), n_eval=len(data.eval), details=overlap_details(data),
        load_avg_start=load_at_start(),
    )


def guarded(cfg: ExperimentConfig, params: MethodParams, data: TaskData, out: Path,
            work: Callable[[RunResult, Path], RunResult]) -> RunResult:
    """Run one row; a failure becomes a ``failed`` result (with the error) instead of ending
    the experiment. The result is written to ``out/<row>/results.json`` either way."""
    mdir = out / params.label
    base = base_result(cfg, params, data)
    if is_main():
        base.model_copy(update={"status": "incomplete"}).write(mdir)
    try:
        result = work(base, mdir)
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        if not isinstance(exc, PeftlabError) and is_main():
            traceback.print_exc()
        result = base.model_copy(update={"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                         "flags": ["nan_loss"] if isinstance(exc, NonFiniteLoss) else []})
        if is_main():  # every process records the failure; rank 0 alone says so
            print(f"error: method {params.label} failed: {exc}", file=sys.stderr)
    if is_main():
        result.write(mdir)
        log_result(cfg.train.log_to, out, cfg.name, result)
    return result


def _run_trained(cfg: ExperimentConfig, params: MethodParams, data: TaskData, encodings: Encodings,
                 out: Path, quiet: bool) -> RunResult:
    return run_method(cfg, params, data, *encodings.get(cfg.backbone_for(params)), out, quiet)


def _run_icl(cfg: ExperimentConfig, params: MethodParams, data: TaskData, encodings: Encodings,
             out: Path, quiet: bool) -> RunResult:
    bb_name = cfg.backbone_for(params).name
    _say(quiet, f"== {params.label} ({params.method} on {bb_name})")
    method = METHODS.get(params.method)

    def work(base: RunResult, mdir: Path) -> RunResult:
        # LoRA leaves the base weights as they were, so the adapted LM still has its base's fingerprint
        save = (lambda m: save_atomically(method, m, params, mdir / ADAPTER_DIR, base_fingerprint(m, bb_name))
                ) if method.saves_adapter else None
        result = run_icl(cfg, method, params, data, base, quiet, save)
        return result.model_copy(update={"adapter_path": f"{mdir.name}/{ADAPTER_DIR}"}) if save else result

    return guarded(cfg, params, data, out, work)


RUNNERS.add("train", _run_trained)
RUNNERS.add("icl", _run_icl)


def _run_method(cfg: ExperimentConfig, method: Any, params: MethodParams, data: TaskData, tokenizer: Any,
                train_f: Features, eval_f: Features, mdir: Path, base: RunResult, quiet: bool) -> RunResult:
    set_seed(cfg.train.seed)
    refuse_unsupported(method)  # before accelerate reads the launcher's FSDP/DeepSpeed settings
    acc = make_accelerator(cfg.train)
    sharded = use_sharding(acc)
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if acc.device.type == "cuda" else None)
    search = None
    if cfg.search is not None:  # on held-out training data only; the full run below uses the best value
        search = search_lr(params, cfg.search, train_f, cfg.train.seed, cfg.train.batch_size,
                           lambda p, tr, va: _trial(cfg, method, p, data, tokenizer, tr, va, collate, acc),
                           lambda msg: _say(quiet, msg))
        params = params.model_copy(update={"lr": search["chosen"]})
        set_seed(cfg.train.seed)
    _say(quiet, f"== {params.label} ({params.method}, lr={params.lr:g})")
    overhead = psutil.Process().memory_info().rss if acc.device.type == "cpu" else 0  # in the measured peak
    with PeakMemory(acc.device) as mem:
        t0 = time.perf_counter()
        bb = cfg.backbone_for(params)
        extra = method_load_kwargs(bb, method, params, data.num_labels)
        loading_info: dict[str, Any] = {}
        model = load_classifier(bb, data.label_names, tokenizer, extra, loading_info)
        fingerprint = base_fingerprint(model, bb.name)
        spec = arch_spec(model.config)
        estimate = estimate_bytes(params, spec, model.config, cfg.train.batch_size, cfg.train.max_length, overhead,
                                  acc.device.type)
        fresh = newly_initialised(loading_info, spec.head_modules if spec is not None else DEFAULT_HEADS)
        if fresh:
            warn(newly_initialised_warning(cfg.backbone.name, fresh))
        model = method.prepare(model, params, spec)
        trainable, total = count_params(model)
        before = _fingerprint(model)
        # sharded: no checkpoints (their optimizer state would be shards), a rerun restarts the method
        plan = None if sharded else checkpoint_plan(cfg, mdir, model, quiet)
        if sharded and cfg.train.checkpoints and not method.caches_features:
            _say(quiet, "   FSDP: no checkpoints are written; an interrupted method restarts from scratch")
        model, outcome = _train(method, model, params, spec, cfg, train_f, eval_f, collate, acc, quiet, plan)
        trained = model
        model = unsharded_copy(trained, lambda: method.prepare(
            load_classifier(bb, data.label_names, tokenizer, extra), params, spec))
        wall = time.perf_counter() - t0
    d_train = method.derived_trainable(params, spec) if spec is not None else None
    d_total = method.derived_total(params, spec) if spec is not None else None
    agree = None if d_train is None else (d_train == trainable and d_total == total)
    flags = [f for f, on in (("nan_loss", outcome.nan_loss), ("params_unchanged", not _changed(before, model)),
                             ("params_mismatch", agree is False), (NEWLY_INITIALISED, bool(fresh))) if on]
    flags += overlap_flags(data)
    assert outcome.logits is not None
    pred = outcome.logits.argmax(-1)
    if is_collapsed(pred, data.num_labels):
        flags.insert(0, "collapsed")
    stop_if_diverged(outcome, mdir)
    adapter_bytes = (save_atomically(method, model, params, mdir / ADAPTER_DIR, fingerprint)
                     if acc.is_main_process else None)
    if acc.is_main_process:
        clear_checkpoints(mdir)
    m = classification_metrics(data.eval.labels, pred, data.label_names)
    return base.model_copy(update=dict(
        **trained_result_fields(outcome, m, (trainable, total, d_train, d_total, agree), wall, mem),
        adapter_bytes=adapter_bytes, adapter_path=f"{mdir.name}/{ADAPTER_DIR}",
        flags=flags, environment=environment(str(acc.device)),
        details={**base.details, "memory_estimate_bytes": estimate, "train_time_estimate_s": outcome.estimated_train_s, **({"lr_search": search} if search else {}), **({"fsdp_processes": acc.num_processes} if model is not trained else {}), **({"newly_initialised": fresh[:50], "newly_initialised_count": len(fresh)} if fresh else {})},
    ))


def _trial(cfg: ExperimentConfig, method: Any, params: MethodParams, data: TaskData, tokenizer: Any,
           train_f: Features, val_f: Features, collate: Any, acc: Any) -> EpochRecord | None:
    """One search trial: a fresh model, ``params`` (the trial's lr and epochs), scored on ``val_f``."""
    set_seed(cfg.train.seed)
    bb = cfg.backbone_for(params)
    model = load_classifier(bb, data.label_names, tokenizer, method_load_kwargs(bb, method, params, data.num_labels))
    spec = arch_spec(model.config)
    model = method.prepare(model, params, spec)
    _, outcome = _train(method, model, params, spec, cfg, train_f, val_f, collate, acc, True)
    return None if outcome.nan_loss or not outcome.epochs else outcome.epochs[-1]


def trained_result_fields(outcome: FitOutcome, m: dict[str, Any], counts: tuple[int, int, int | None, int | None, bool | None],
                          wall: float, mem: PeakMemory) -> dict[str, Any]:
    """The RunResult fields every trained row fills the same way (text and image runners).

    ``m``: classification_metrics of the final predictions; ``counts``: trainable, total, derived
    trainable, derived total, and whether counted and derived agree.
    """
    trainable, total, d_train, d_total, agree = counts
    return dict(
        epochs=outcome.epochs, accuracy=m["accuracy"], macro_f1=m["macro_f1"], per_class=m["per_class"],
        confusion_matrix=m["confusion_matrix"],
        params=ParamCounts(trainable=trainable, total=total, percent_trainable=100.0 * trainable / total,
                           derived_trainable=d_train, derived_total=d_total, agree=agree),
        timing=Timing(
            wall_s=wall, train_s=outcome.train_s, eval_s=outcome.eval_s,
            # zero-shot rows spend train_s computing features but train on no example
            train_examples_per_s=outcome.train_examples / outcome.train_s if outcome.train_s and outcome.train_examples else None,
            eval_examples_per_s=outcome.eval_examples / outcome.eval_s if outcome.eval_s else None,
        ),
        peak_memory_bytes=mem.peak_bytes, memory_kind=mem.kind,
    )


def save_atomically(method: Any, model: torch.nn.Module, params: MethodParams, target: Path,
                    fingerprint: dict[str, str] | None = None) -> int:
    """Save into a temp folder, then swap it in: a saved adapter is complete or absent."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    method.save(model, params, tmp)
    if fingerprint is not None:
        write_fingerprint(tmp, fingerprint)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return dir_size_bytes(target)
