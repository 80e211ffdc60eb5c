"""One row of an experiment, text or image: its output folder, its result, its failure.

The text runner (runners/experiment.py) and the image runner (runners/image_experiment.py) train
differently but keep the same books: a row kept from an earlier run of the same config, a row
marked incomplete until it ends, a failure turned into a failed row, an adapter swapped in whole,
and the result fields every trained row fills the same way. They live here so both runners share
one copy.
"""

from __future__ import annotations

import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftlab.backbones.loaders import record_portable_base
from peftlab.config import ExperimentConfig
from peftlab.infra.config_base import MethodParams
from peftlab.infra.errors import PeftlabError
from peftlab.infra.fingerprint import write_fingerprint
from peftlab.infra.guards import overlap_count
from peftlab.infra.io import dir_size_bytes, follow_umask
from peftlab.results.metrics import classification_metrics, is_collapsed, majority_class
from peftlab.results import (ADAPTER_DIR, BASELINE_METHOD, PREDICTIONS_FILE, RESULTS_FILE, ParamCounts, Predictions, RunResult, Timing, read_result,
                             write_predictions)
from peftlab.runners.checkpoint import clear_checkpoints, complete_checkpoints, load_checkpoint
from peftlab.infra.distributed import barrier, is_main
from peftlab.runners.measure import PeakMemory
from peftlab.runners.train import CheckpointPlan, FitOutcome
from peftlab.tasks import TaskData
from peftlab.infra.threads import load_at_start
from peftlab.infra.tracking import log_result


BASELINE = BASELINE_METHOD


def checkpoint_plan(cfg: ExperimentConfig, mdir: Path, model: torch.nn.Module, quiet: bool) -> CheckpointPlan | None:
    """Checkpointing for this method, resuming from its newest complete checkpoint if there is one."""
    if not cfg.train.checkpoints:
        return None
    plan = CheckpointPlan(mdir, every=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints)
    found = complete_checkpoints(mdir)
    if found:
        plan.resume = load_checkpoint(found[-1], model)
        say(quiet, f"   resuming from {found[-1].name} (epoch {plan.resume.progress.epoch}, "
                   f"{plan.resume.progress.batches_done} batches done)")
    return plan



def say(quiet: bool, msg: str) -> None:
    if not quiet and is_main():
        print(msg, file=sys.stderr, flush=True)


def kept_or_run(out: Path, params: MethodParams, reuse: bool, quiet: bool, run: Callable[[], RunResult]) -> RunResult:
    """One row of a run (text or image): kept if an earlier run of this config finished it, else
    ``run()``, which resumes from the row's checkpoints when the run is continued (``reuse``)."""
    done = finished_result(out / params.label, params) if reuse else None
    if done is not None:
        say(quiet, f"== {params.label}: finished in an earlier run, kept")
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


def record_predictions(mdir: Path, preds: Predictions) -> None:
    """The one place every runner's row (trained, in-context, zero-shot, image, baseline) writes
    its per-example answers: ``mdir/predictions.jsonl``, by rank 0 alone."""
    if is_main():
        write_predictions(mdir, preds)


def baseline_row(cfg: ExperimentConfig, data: TaskData, out: Path) -> RunResult:
    """The majority-class row, written with its predictions (text and image runners alike)."""
    result = baseline_result(cfg, data)
    if is_main():
        pred = np.full(len(data.eval), majority_class(data.train.labels))
        record_predictions(out / BASELINE, Predictions.of(data.label_names, data.eval.labels, [pred],
                                                          [np.eye(data.num_labels)[pred]]))
        result.write(out / BASELINE)
    return result


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
        details=overlap_details(data), select_metric=cfg.train.select_metric,
    )


def overlap_details(data: TaskData) -> dict[str, Any]:
    """Recorded in every result: evaluation examples whose input also occurs in training, and
    those a builtin task's loader dropped for that reason (when any; shown once per task)."""
    dropped = int(getattr(data, "eval_duplicates_dropped", 0))
    return {"train_eval_overlap": overlap_count(data.train, data.eval),
            **({"eval_duplicates_dropped": dropped} if dropped else {})}


def overlap_flags(data: TaskData) -> list[str]:
    return ["train_eval_overlap"] if overlap_count(data.train, data.eval) else []


def trainable_fingerprint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A slice of every trainable tensor: enough to tell whether training moved it."""
    return {n: p.detach().flatten()[:4096].float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def changed_since(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = dict(model.named_parameters())
    return any(not torch.equal(v, after[n].detach().flatten()[:4096].float().cpu()) for n, v in before.items() if n in after)


class NonFiniteLoss(PeftlabError):
    """Training diverged: the method stops and its result is marked ``nan_loss``."""


def stop_if_diverged(outcome: FitOutcome, mdir: Path) -> None:
    """Nothing is saved from a diverged model; the last good checkpoint stays for inspection."""
    if outcome.nan_loss:
        kept = f"; last good checkpoint kept in {mdir / 'checkpoints'}" if complete_checkpoints(mdir) else ""
        raise NonFiniteLoss(f"training loss became NaN/inf in epoch {len(outcome.epochs)}; method stopped{kept}")


def base_result(cfg: ExperimentConfig, params: MethodParams, data: TaskData) -> RunResult:
    """What a row's result holds before it runs (and keeps if it fails)."""
    return RunResult(
        name=params.label, method=params.method, method_params=params.model_dump(mode="json"),
        task=data.name, backbone=cfg.backbone_for(params).name, seed=cfg.train.seed, labels=data.label_names,
        n_train=len(data.train), n_eval=len(data.eval), details=overlap_details(data),
        load_avg_start=load_at_start(), select_metric=cfg.train.select_metric,
    )


def guarded(cfg: ExperimentConfig, params: MethodParams, data: TaskData, out: Path,
            work: Callable[[RunResult, Path], RunResult]) -> RunResult:
    """Run one row; a failure becomes a ``failed`` result (with the error) instead of ending
    the experiment. The result is written to ``out/<row>/results.json`` either way."""
    mdir = out / params.label
    base = base_result(cfg, params, data)
    if is_main():
        base.model_copy(update={"status": "incomplete"}).write(mdir)
        (mdir / PREDICTIONS_FILE).unlink(missing_ok=True)  # an earlier run's answers are not this row's
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


def trained_result_fields(outcome: FitOutcome, m: dict[str, Any], counts: tuple[int, int, int | None, int | None, bool | None],
                          wall: float, mem: PeakMemory) -> dict[str, Any]:
    """The RunResult fields every trained row fills the same way (text and image runners).

    ``m``: classification_metrics of the final predictions; ``counts``: trainable, total, derived
    trainable, derived total, and whether counted and derived agree.
    """
    trainable, total, d_train, d_total, agree = counts
    weights = None if outcome.class_weights is None else dict(zip(m["per_class"], outcome.class_weights))
    return dict(class_weights=weights,
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
    follow_umask(tmp)  # peft's save_pretrained writes its weights 0600 (safetensors >= 0.8)
    if fingerprint is not None:
        record_portable_base(tmp, fingerprint["base"])  # an alias's hub id, not this venv's path
        write_fingerprint(tmp, fingerprint)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return dir_size_bytes(target)
