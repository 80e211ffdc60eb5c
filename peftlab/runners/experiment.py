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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding, set_seed

from peftlab.backbones import load_classifier, load_hf_config, load_tokenizer, method_load_kwargs
from peftlab.config import BackboneConfig, ExperimentConfig, dump_config
from peftlab.config_base import MethodParams
from peftlab.errors import PeftlabError
from peftlab.io import atomic_write_text, dir_size_bytes
from peftlab.methods import METHODS
from peftlab.methods.base import head_names
from peftlab.metrics import classification_metrics, is_collapsed, majority_class
from peftlab.params import arch_spec, count_params
from peftlab.registry import Registry
from peftlab.report.compare import write_comparison
from peftlab.results import ParamCounts, RunResult, Timing, environment
from peftlab.runners.batching import Features, encode
from peftlab.runners.cached import fit_head
from peftlab.runners.icl import run_icl
from peftlab.runners.measure import PeakMemory
from peftlab.runners.train import FitOutcome, fit, make_accelerator
from peftlab.tasks import TaskData, load_task

ADAPTER_DIR = "adapter"
BASELINE = "majority_class"


def preflight(cfg: ExperimentConfig) -> None:
    """Checks that need each row's backbone config (no weights): refuse before anything trains."""
    confs: dict[str, Any] = {}
    for params in cfg.methods:
        bb = cfg.backbone_for(params)
        if bb.name not in confs:
            confs[bb.name] = load_hf_config(bb, num_labels=len(cfg.task.label_names or [0, 1]))
        METHODS.get(params.method).check(params, arch_spec(confs[bb.name]), confs[bb.name].model_type)


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


def run_experiment(cfg: ExperimentConfig, quiet: bool = False) -> list[RunResult]:
    preflight(cfg)
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
    except OSError as exc:
        raise PeftlabError(f"output_dir {out}: cannot write ({exc.strerror or exc})") from None
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    data = load_task(cfg.task, cfg.train.seed)
    encodings = Encodings(cfg, data)
    _say(quiet, f"task {data.name}: {len(data.train)} train / {len(data.eval)} eval, labels {data.label_names}")
    results = [baseline_result(cfg, data)] if cfg.baseline else []
    if results:
        results[0].write(out / BASELINE)
    for params in cfg.methods:
        runner = RUNNERS.get(METHODS.get(params.method).runner)
        results.append(runner(cfg, params, data, encodings, out, quiet))
    write_comparison(results, out)
    return results


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
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
        flags=["collapsed"] if is_collapsed(pred, data.num_labels) else [],
    )


def _fingerprint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A slice of every trainable tensor: enough to tell whether training moved it."""
    return {n: p.detach().flatten()[:4096].float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = dict(model.named_parameters())
    return any(not torch.equal(v, after[n].detach().flatten()[:4096].float().cpu()) for n, v in before.items() if n in after)


def _train(method: Any, model: torch.nn.Module, params: MethodParams, spec: Any, cfg: ExperimentConfig,
           train_f: Features, eval_f: Features, collate: Any, acc: Any, quiet: bool) -> tuple[torch.nn.Module, FitOutcome]:
    tcfg = cfg.train if params.epochs is None else cfg.train.model_copy(update={"epochs": params.epochs})
    if method.caches_features:
        heads = head_names(model, spec)
        if len(heads) != 1:
            raise PeftlabError(f"{method.name}: needs a single head module, found {heads}")
        model.to(acc.device)
        head = model.get_submodule(heads[0])
        is_decoder = bool(spec.is_decoder) if spec is not None else False
        return model, fit_head(model, head, train_f, eval_f, collate, params.lr, tcfg, acc, is_decoder)
    return fit(model, train_f, eval_f, collate, params.lr, tcfg, acc, params.label, quiet)


def run_method(cfg: ExperimentConfig, params: MethodParams, data: TaskData, tokenizer: Any,
               train_f: Features, eval_f: Features, out: Path, quiet: bool) -> RunResult:
    method = METHODS.get(params.method)
    return guarded(cfg, params, data, out, lambda base, mdir: _run_method(
        cfg, method, params, data, tokenizer, train_f, eval_f, mdir, base, quiet))


def guarded(cfg: ExperimentConfig, params: MethodParams, data: TaskData, out: Path,
            work: Callable[[RunResult, Path], RunResult]) -> RunResult:
    """Run one row; a failure becomes a ``failed`` result (with the error) instead of ending
    the experiment. The result is written to ``out/<row>/results.json`` either way."""
    mdir = out / params.label
    base = RunResult(
        name=params.label, method=params.method, method_params=params.model_dump(mode="json"),
        task=data.name, backbone=cfg.backbone_for(params).name, seed=cfg.train.seed, labels=data.label_names,
        n_train=len(data.train), n_eval=len(data.eval),
    )
    try:
        result = work(base, mdir)
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        if not isinstance(exc, PeftlabError):
            traceback.print_exc()
        result = base.model_copy(update={"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        print(f"error: method {params.label} failed: {exc}", file=sys.stderr)
    result.write(mdir)
    return result


def _run_trained(cfg: ExperimentConfig, params: MethodParams, data: TaskData, encodings: Encodings,
                 out: Path, quiet: bool) -> RunResult:
    return run_method(cfg, params, data, *encodings.get(cfg.backbone_for(params)), out, quiet)


def _run_icl(cfg: ExperimentConfig, params: MethodParams, data: TaskData, encodings: Encodings,
             out: Path, quiet: bool) -> RunResult:
    _say(quiet, f"== {params.label} ({params.method} on {cfg.backbone_for(params).name})")
    method = METHODS.get(params.method)

    def work(base: RunResult, mdir: Path) -> RunResult:
        save = (lambda m: save_atomically(method, m, params, mdir / ADAPTER_DIR)) if method.saves_adapter else None
        result = run_icl(cfg, method, params, data, base, quiet, save)
        return result.model_copy(update={"adapter_path": f"{mdir.name}/{ADAPTER_DIR}"}) if save else result

    return guarded(cfg, params, data, out, work)


RUNNERS.add("train", _run_trained)
RUNNERS.add("icl", _run_icl)


def _run_method(cfg: ExperimentConfig, method: Any, params: MethodParams, data: TaskData, tokenizer: Any,
                train_f: Features, eval_f: Features, mdir: Path, base: RunResult, quiet: bool) -> RunResult:
    set_seed(cfg.train.seed)
    acc = make_accelerator(cfg.train)
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if acc.device.type == "cuda" else None)
    _say(quiet, f"== {params.label} ({params.method}, lr={params.lr:g})")
    with PeakMemory(acc.device) as mem:
        t0 = time.perf_counter()
        bb = cfg.backbone_for(params)
        extra = method_load_kwargs(bb, method, params, data.num_labels)
        model = load_classifier(bb, data.label_names, tokenizer, extra)
        spec = arch_spec(model.config)
        model = method.prepare(model, params, spec)
        trainable, total = count_params(model)
        before = _fingerprint(model)
        model, outcome = _train(method, model, params, spec, cfg, train_f, eval_f, collate, acc, quiet)
        wall = time.perf_counter() - t0
    d_train = method.derived_trainable(params, spec) if spec is not None else None
    d_total = method.derived_total(params, spec) if spec is not None else None
    agree = None if d_train is None else (d_train == trainable and d_total == total)
    flags = [f for f, on in (("nan_loss", outcome.nan_loss), ("params_unchanged", not _changed(before, model)),
                             ("params_mismatch", agree is False)) if on]
    assert outcome.logits is not None
    pred = outcome.logits.argmax(-1)
    if is_collapsed(pred, data.num_labels):
        flags.insert(0, "collapsed")
    adapter_bytes = save_atomically(method, model, params, mdir / ADAPTER_DIR) if acc.is_main_process else None
    m = classification_metrics(data.eval.labels, pred, data.label_names)
    return base.model_copy(update=dict(
        epochs=outcome.epochs, accuracy=m["accuracy"], macro_f1=m["macro_f1"], per_class=m["per_class"],
        confusion_matrix=m["confusion_matrix"],
        params=ParamCounts(trainable=trainable, total=total, percent_trainable=100.0 * trainable / total,
                           derived_trainable=d_train, derived_total=d_total, agree=agree),
        timing=Timing(
            wall_s=wall, train_s=outcome.train_s, eval_s=outcome.eval_s,
            train_examples_per_s=outcome.train_examples / outcome.train_s if outcome.train_s else None,
            eval_examples_per_s=outcome.eval_examples / outcome.eval_s if outcome.eval_s else None,
        ),
        peak_memory_bytes=mem.peak_bytes, memory_kind=mem.kind,
        adapter_bytes=adapter_bytes, adapter_path=f"{mdir.name}/{ADAPTER_DIR}",
        flags=flags, environment=environment(str(acc.device)),
    ))


def save_atomically(method: Any, model: torch.nn.Module, params: MethodParams, target: Path) -> int:
    """Save into a temp folder, then swap it in: a saved adapter is complete or absent."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    method.save(model, params, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return dir_size_bytes(target)
