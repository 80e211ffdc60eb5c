"""Run every method of an image experiment and write the same results and comparison as text.

Images are decoded and preprocessed once into pixel tensors; a frozen network's features
(CLIP image embeddings, a classifier's head inputs) are computed once and cached under
``output_dir/.feature_cache``. Each method then trains with one loop on those tensors.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transformers import set_seed

import peftlab.images.methods_classifier  # noqa: F401  (registers the classifier methods)
import peftlab.images.methods_clip  # noqa: F401  (registers the CLIP methods)
from peftlab.config import ExperimentConfig
from peftlab.config_base import MethodParams
from peftlab.errors import PeftlabError
from peftlab.fingerprint import image_base_fingerprint
from peftlab.images.backbones import backbone_kind, load_image_backbone
from peftlab.images.method_base import Built, ImageContext, image_method
from peftlab.images.report import per_class_summary, report_lines
from peftlab.metrics import classification_metrics, is_collapsed
from peftlab.params import count_params
from peftlab.report.compare import write_comparison
from peftlab.results import RunResult, environment
from peftlab.runners.cached import fit_tensors, predict_tensors
from peftlab.runners.experiment import (ADAPTER_DIR, BASELINE, _changed, _fingerprint, _say, baseline_result,
                                        prepare_output, save_atomically, trained_result_fields)
from peftlab.runners.measure import PeakMemory
from peftlab.runners.train import FitOutcome, epoch_record, make_accelerator
from peftlab.tasks.images import load_image_task

FEATURE_CACHE = ".feature_cache"


def preflight_image(cfg: ExperimentConfig) -> str:
    """The backbone's kind (from its config, no weights) and a refusal for any method that cannot run on it."""
    kind = backbone_kind(cfg.backbone)
    for params in cfg.methods:
        image_method(params.method, kind)
    return kind


def build_context(cfg: ExperimentConfig, cache_dir: Path | None, quiet: bool = True) -> ImageContext:
    device = make_accelerator(cfg.train).device
    data = load_image_task(cfg.task, cfg.train.seed)
    backbone = load_image_backbone(cfg.backbone)
    if getattr(backbone, "model", None) is not None:
        backbone.model.to(device)
    prep = backbone.preprocess.with_size(cfg.task.image_size)
    t0 = time.perf_counter()
    x_train, x_eval = prep.batch(data.train.images), prep.batch(data.eval.images)
    _say(quiet, f"task {data.name}: {len(data.train)} train / {len(data.eval)} eval images at {prep.size}px "
                f"({time.perf_counter() - t0:.1f} s to preprocess), labels {data.label_names}")
    fingerprint = image_base_fingerprint(backbone, data.label_names, cfg.train.seed)
    return ImageContext(backbone=backbone, data=data, x_train=x_train, x_eval=x_eval, tcfg=cfg.train,
                        device=device, cache_dir=cache_dir, fingerprint=fingerprint)


def run_image_experiment(cfg: ExperimentConfig, quiet: bool = False) -> list[RunResult]:
    kind = preflight_image(cfg)
    out, _ = prepare_output(cfg)
    ctx = build_context(cfg, out / FEATURE_CACHE, quiet)
    results = [baseline_result(cfg, ctx.data)] if cfg.baseline else []
    if results:
        results[0].write(out / BASELINE)
    for params in cfg.methods:
        results.append(run_image_method(ctx, cfg, params, kind, out, quiet))
    write_comparison(results, out)
    return results


def run_image_method(ctx: ImageContext, cfg: ExperimentConfig, params: MethodParams, kind: str, out: Path,
                     quiet: bool) -> RunResult:
    mdir = out / params.label
    data = ctx.data
    base = RunResult(
        name=params.label, method=params.method, method_params=params.model_dump(mode="json"),
        task=data.name, backbone=cfg.backbone.name, seed=cfg.train.seed, labels=data.label_names,
        n_train=len(data.train), n_eval=len(data.eval),
    )
    _say(quiet, f"== {params.label} ({params.method} on a {kind} backbone, lr={params.lr:g})")
    try:
        result = _run(ctx, cfg, params, kind, mdir, base)
        _say(quiet, f"   accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f} "
                    f"({result.timing.wall_s if result.timing else 0:.0f} s)")
    except Exception as exc:
        if not isinstance(exc, PeftlabError):
            traceback.print_exc()
        result = base.model_copy(update={"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        print(f"error: method {params.label} failed: {exc}", file=sys.stderr)
    result.write(mdir)
    return result


def _fit(ctx: ImageContext, built: Built, params: MethodParams) -> FitOutcome:
    tcfg = ctx.tcfg if params.epochs is None else ctx.tcfg.model_copy(update={"epochs": params.epochs})
    if built.trains:
        return fit_tensors(built.trainable, built.forward, built.x_train, ctx.data.train.labels, built.x_eval,
                           ctx.data.eval.labels, params.lr, tcfg, ctx.device, start_s=built.feature_s,
                           train_mode=built.train_mode)
    built.trainable.eval()
    t0 = time.perf_counter()
    logits = predict_tensors(built.forward, built.x_eval, tcfg.eval_batch_size, ctx.device)
    out = FitOutcome(logits=logits, train_s=built.feature_s, eval_s=time.perf_counter() - t0,
                     eval_examples=len(built.x_eval))
    out.epochs = [epoch_record(0, None, logits, ctx.data.eval.labels)]
    return out


def _run(ctx: ImageContext, cfg: ExperimentConfig, params: MethodParams, kind: str, mdir: Path,
         base: RunResult) -> RunResult:
    set_seed(cfg.train.seed)
    method = image_method(params.method, kind)
    with PeakMemory(ctx.device) as mem:
        t0 = time.perf_counter()
        built = method.build(ctx, params)
        built.model.to(ctx.device)
        trainable, total = count_params(built.model)
        before = _fingerprint(built.model)
        outcome = _fit(ctx, built, params)
        wall = time.perf_counter() - t0
    d_train, d_total = method.derived(ctx, params)
    agree = None if d_train is None else (d_train == trainable and (d_total is None or d_total == total))
    unchanged = built.trains and not _changed(before, built.model)
    flags = [f for f, on in (("nan_loss", outcome.nan_loss), ("params_unchanged", unchanged),
                             ("params_mismatch", agree is False)) if on]
    assert outcome.logits is not None
    pred = outcome.logits.argmax(-1)
    if is_collapsed(pred, ctx.data.num_labels):
        flags.insert(0, "collapsed")
    saver: Any = SimpleNamespace(save=lambda _model, _params, d: built.save(d))
    adapter_bytes = save_atomically(saver, built.model, params, mdir / ADAPTER_DIR, ctx.fingerprint)
    m = classification_metrics(ctx.data.eval.labels, pred, ctx.data.label_names)
    details = {**per_class_summary(m["per_class"]), **built.details}
    details["report_lines"] = report_lines(details)
    return base.model_copy(update=dict(
        **trained_result_fields(outcome, m, (trainable, total, d_train, d_total, agree), wall, mem),
        adapter_bytes=adapter_bytes, adapter_path=f"{mdir.name}/{ADAPTER_DIR}",
        flags=flags, details=details, environment=environment(str(ctx.device)),
    ))

