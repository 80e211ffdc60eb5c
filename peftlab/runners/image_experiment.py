"""Run every method of an image experiment and write the same results and comparison as text.

Images are decoded and preprocessed once into pixel tensors; a frozen network's features
(CLIP image embeddings, a classifier's head inputs) are computed once and cached under
``output_dir/.feature_cache``. Each method then trains with one loop on those tensors.

Under ``accelerate launch`` (or torchrun) every process runs every method, training data-parallel
on its shard of each global batch (peftlab.runners.data_parallel); rank 0 alone writes results,
adapters, checkpoints, the feature cache and the comparison.

Runs resume as text runs do (the same helpers): re-running the same config on the same output
folder keeps finished rows and continues the others from their newest checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transformers import set_seed

import peftlab.images.methods_classifier  # noqa: F401  (registers the classifier methods)
import peftlab.images.methods_clip  # noqa: F401  (registers the CLIP methods)
from peftlab.config import ExperimentConfig
from peftlab.infra.config_base import MethodParams
from peftlab.infra.fingerprint import image_base_fingerprint
from peftlab.images.backbones import backbone_kind, load_image_backbone
from peftlab.images.method_base import Built, ImageContext, image_method
from peftlab.images.report import per_class_summary, report_lines
from peftlab.results.metrics import classification_metrics, is_collapsed
from peftlab.estimate.params import count_params
from peftlab.backbones.precision import Precision
from peftlab.report.compare import write_comparison
from peftlab.results import Predictions, RunResult, environment
from peftlab.runners.cached import fit_tensors, predict_tensors
from peftlab.runners.checkpoint import clear_checkpoints
from peftlab.infra.distributed import is_main
from peftlab.runners.output import ResumeMode, prepare_output
from peftlab.runners.rows import (ADAPTER_DIR, baseline_row, changed_since, checkpoint_plan, guarded, kept_or_run,
                                  record_predictions, save_atomically, say, stop_if_diverged, trainable_fingerprint,
                                  trained_result_fields)
from peftlab.runners.measure import PeakMemory
from peftlab.runners.train import CheckpointPlan, FitOutcome, epoch_record, make_accelerator
from peftlab.tasks.images import load_image_task
from peftlab.infra.tracking import check_trackers

FEATURE_CACHE = ".feature_cache"


#: image rows (ViT/CNN methods, CLIP) train and evaluate without autocast on every device: their
#: loop (peftlab.runners.cached.fit_tensors) has no mixed-precision path yet
IMAGE_PRECISION = Precision("fp32", "image runs compute in fp32 (no autocast path)")


def preflight_image(cfg: ExperimentConfig) -> str:
    """The backbone's kind (from its config, no weights) and a refusal for any method that cannot run on it
    (or a tracker in ``train.log_to`` that is not installed: rows are logged as text rows are)."""
    kind = backbone_kind(cfg.backbone)
    for params in cfg.methods:
        image_method(params.method, kind).check(params)
    check_trackers(cfg.train.log_to)
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
    say(quiet, f"task {data.name}: {len(data.train)} train / {len(data.eval)} eval images at {prep.size}px "
               f"({time.perf_counter() - t0:.1f} s to preprocess), labels {data.label_names}")
    fingerprint = image_base_fingerprint(backbone, data.label_names, cfg.train.seed)
    return ImageContext(backbone=backbone, data=data, x_train=x_train, x_eval=x_eval, tcfg=cfg.train,
                        device=device, cache_dir=cache_dir, fingerprint=fingerprint)


def run_image_experiment(cfg: ExperimentConfig, quiet: bool = False, resume: ResumeMode = "fresh",
                         command: list[str] | None = None) -> list[RunResult]:
    """Every method of an image config; ``resume`` and ``command`` as for text runs (run_experiment)."""
    kind = preflight_image(cfg)
    out, reuse = prepare_output(cfg, resume, command)
    ctx = build_context(cfg, out / FEATURE_CACHE, quiet)
    results = [baseline_row(cfg, ctx.data, out)] if cfg.baseline else []
    for params in cfg.methods:
        results.append(kept_or_run(out, params, reuse, quiet,
                                   lambda: run_image_method(ctx, cfg, params, kind, out, quiet)))
    if is_main():
        write_comparison(results, out)
    return results


def run_image_method(ctx: ImageContext, cfg: ExperimentConfig, params: MethodParams, kind: str, out: Path,
                     quiet: bool) -> RunResult:
    """One row, marked incomplete until it ends; a failure becomes a failed row (runners.rows.guarded)."""
    say(quiet, f"== {params.label} ({params.method} on a {kind} backbone, lr={params.lr:g})")

    def work(base: RunResult, mdir: Path) -> RunResult:
        result = _run(ctx, cfg, params, kind, mdir, base, quiet)
        say(quiet, f"   accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f} "
                   f"({result.timing.wall_s if result.timing else 0:.0f} s)")
        return result

    return guarded(cfg, params, ctx.data, out, work)


def _fit(ctx: ImageContext, built: Built, params: MethodParams, plan: CheckpointPlan | None) -> FitOutcome:
    tcfg = ctx.tcfg if params.epochs is None else ctx.tcfg.model_copy(update={"epochs": params.epochs})
    if built.trains:
        return fit_tensors(built.trainable, built.forward, built.x_train, ctx.data.train.labels, built.x_eval,
                           ctx.data.eval.labels, params.lr, tcfg, ctx.device, start_s=built.feature_s,
                           train_mode=built.train_mode, ckpt=plan)
    built.trainable.eval()
    t0 = time.perf_counter()
    logits = predict_tensors(built.forward, built.x_eval, tcfg.eval_batch_size, ctx.device)
    out = FitOutcome(logits=logits, train_s=built.feature_s, eval_s=time.perf_counter() - t0,
                     eval_examples=len(built.x_eval))
    out.epochs = [epoch_record(0, None, logits, ctx.data.eval.labels)]
    return out


def _run(ctx: ImageContext, cfg: ExperimentConfig, params: MethodParams, kind: str, mdir: Path,
         base: RunResult, quiet: bool) -> RunResult:
    set_seed(cfg.train.seed)
    method = image_method(params.method, kind)
    with PeakMemory(ctx.device) as mem:
        t0 = time.perf_counter()
        built = method.build(ctx, params)
        built.model.to(ctx.device)
        trainable, total = count_params(built.model)
        before = trainable_fingerprint(built.model)
        plan = checkpoint_plan(cfg, mdir, built.trainable, quiet) if built.trains else None
        outcome = _fit(ctx, built, params, plan)
        wall = time.perf_counter() - t0
    d_train, d_total = method.derived(ctx, params)
    agree = None if d_train is None else (d_train == trainable and (d_total is None or d_total == total))
    unchanged = built.trains and not changed_since(before, built.model)
    flags = [f for f, on in (("nan_loss", outcome.nan_loss), ("params_unchanged", unchanged),
                             ("params_mismatch", agree is False)) if on]
    assert outcome.logits is not None
    pred = outcome.logits.argmax(-1)
    if is_collapsed(pred, ctx.data.num_labels):
        flags.insert(0, "collapsed")
    saver: Any = SimpleNamespace(save=lambda _model, _params, d: built.save(d))
    stop_if_diverged(outcome, mdir)
    adapter_bytes = save_atomically(saver, built.model, params, mdir / ADAPTER_DIR, ctx.fingerprint) if is_main() else None
    if is_main():
        clear_checkpoints(mdir)
    m = classification_metrics(ctx.data.eval.labels, pred, ctx.data.label_names)
    record_predictions(mdir, Predictions.from_logits(ctx.data.label_names, ctx.data.eval.labels, outcome.logits))
    details = {**per_class_summary(m["per_class"]), **built.details}
    details["report_lines"] = report_lines(details)
    return base.model_copy(update=dict(
        **trained_result_fields(outcome, m, (trainable, total, d_train, d_total, agree), wall, mem),
        adapter_bytes=adapter_bytes, adapter_path=f"{mdir.name}/{ADAPTER_DIR}",
        flags=flags, details=details, environment=environment(str(ctx.device)), **IMAGE_PRECISION.result_fields(),
    ))

