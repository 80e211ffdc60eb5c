"""The supervised training loop: AdamW, linear warm-up/decay, accumulation, eval every epoch.

Written on ``accelerate`` so the same loop runs on CPU (fp32, or bf16 autocast where
peftlab.backbones.precision finds it faster), on one GPU (bf16/fp16 autocast)
and under ``accelerate launch`` (data parallel). Evaluation runs on every process over the whole
eval set (cheap next to training) so no gathering is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from peftlab.config import TrainConfig
from peftlab.infra.errors import PeftlabError
from peftlab.backbones.cpu_train import cpu_training
from peftlab.backbones.precision import Precision, resolve, shapes_of
from peftlab.results import EpochRecord
from peftlab.runners.batching import Features, LengthGroupedBatches, sorted_batches
from peftlab.infra.eta import TIMED_STEPS, WARMUP_STEPS, estimate_total_s, eta_line
from peftlab.infra.distributed import all_finite, global_sums
from peftlab.runners.checkpoint import Progress, Resumed, rank_rng_states, restore_rng, save_checkpoint
from peftlab.runners.progress import bar as progress_bar
from peftlab.runners.progress import metrics_text, say, track


@dataclass
class FitOutcome:
    epochs: list[EpochRecord] = field(default_factory=list)
    logits: np.ndarray | None = None  # final eval logits, in eval-set order
    train_s: float = 0.0
    eval_s: float = 0.0
    train_examples: int = 0
    eval_examples: int = 0
    nan_loss: bool = False
    #: training seconds estimated from the first timed steps (peftlab.infra.eta); None if too few steps
    estimated_train_s: float | None = None
    #: the per-class loss weights training used (train.class_weight), in label-id order; None: unweighted
    class_weights: list[float] | None = None
    #: which dropout sampler trained (peftlab.backbones.dropout), and why; None: the model has no dropout
    dropout: str | None = None


def device_type(tcfg: TrainConfig) -> str:
    """"cuda" when a GPU is visible and not refused by ``train.device``, else "cpu"."""
    if tcfg.device == "cuda" and not torch.cuda.is_available():
        raise PeftlabError("config error: train.device: 'cuda' asked for, but no CUDA device is visible")
    return "cuda" if torch.cuda.is_available() and tcfg.device != "cpu" else "cpu"


def train_precision(tcfg: TrainConfig, model_config: Callable[[], Any] | None = None,
                    keep_fp32: str | None = None, tokens: int | None = None) -> Precision:
    """``train.mixed_precision`` resolved for this device (peftlab.backbones.precision): on a CPU, ``auto``
    probes the feed-forward shapes of ``model_config()`` at ``tokens`` rows (default: one
    training batch at ``max_length``). ``keep_fp32``: the method's ``keeps_fp32`` reason."""
    rows = tokens or tcfg.batch_size * tcfg.max_length
    shapes = (lambda: shapes_of(model_config(), rows)) if model_config is not None else None
    return resolve(tcfg.mixed_precision, device_type(tcfg), shapes, keep_fp32)


def make_accelerator(tcfg: TrainConfig, precision: Precision | None = None) -> Accelerator:
    """An Accelerator computing in ``precision`` (default: :func:`train_precision` without model
    shapes, so a CPU's ``auto`` follows PEFTLAB_CPU_PRECISION or stays fp32)."""
    precision = precision or train_precision(tcfg)
    allow_mixed_precision(precision.mixed_precision)
    return Accelerator(mixed_precision=precision.mixed_precision, gradient_accumulation_steps=tcfg.grad_accum,
                       cpu=device_type(tcfg) == "cpu")


def allow_mixed_precision(mixed_precision: str) -> None:
    """Let the next Accelerator use ``mixed_precision`` even if an earlier one in this process used
    another: accelerate keeps one setting per process and refuses a change, but rows of one run may
    differ (a method that stays fp32 next to bf16 ones). Only the mixed-precision state is reset;
    PartialState (the process group of an ``accelerate launch``) is kept."""
    from accelerate.state import AcceleratorState

    before = AcceleratorState._shared_state.get("_mixed_precision")
    if before is not None and before != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


#: a parameter's name -> the multiple of the learning rate it learns at (a method's ``lr_scale``)
LrScale = Callable[[str], float]
#: (the unwrapped model, optimizer steps done so far including this one, the run's total steps):
#: a method's ``after_step``, called after each optimizer step while its gradients still exist
StepHook = Callable[[nn.Module, int, int], None]


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 lr_scale: LrScale | None = None) -> list[dict[str, Any]]:
    """No weight decay on biases and norm weights (1-d tensors), as BERT's recipe does.

    With ``lr_scale``, each (decay, scale) pair is its own group at ``lr * scale``; the scheduler
    then scales every group by the same factor, so the ratios hold through warm-up and decay.
    Without it, the two groups take the optimizer's ``lr``, as before.
    """
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = lr_scale(name) if lr_scale is not None else 1.0
            groups.setdefault((p.ndim >= 2, scale), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0,
             **({"lr": lr * scale} if lr is not None and scale != 1.0 else {})}
            for (decay, scale), ps in groups.items() if ps or scale == 1.0]


def fused_ok(params: list[torch.Tensor]) -> bool:
    """torch's fused AdamW (one kernel for all tensors) takes float tensors on CPU or CUDA.

    On CPU it is ~7x faster than the default ``foreach`` path (40 vs 250-350 ms a step for the
    22.7M parameters of MiniLM-L6): a tenth of full fine-tuning's step time.
    """
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_optimizer(model: nn.Module, lr: float, tcfg: TrainConfig, steps: int, processes: int = 1,
                   lr_scale: LrScale | None = None) -> tuple[Any, Any]:
    """``steps``: optimizer steps. A scheduler prepared by accelerate on N processes is stepped
    N times per optimizer step, so its schedule is laid out N times longer (same shape).
    ``lr_scale``: per-parameter learning-rate multiples (:func:`param_groups`)."""
    groups = param_groups(model, tcfg.weight_decay, lr, lr_scale)
    opt = torch.optim.AdamW(groups, lr=lr, fused=fused_ok([p for g in groups for p in g["params"]]) or None)
    sched = get_linear_schedule_with_warmup(opt, int(tcfg.warmup_ratio * steps) * processes, steps * processes)
    return opt, sched


@torch.no_grad()
def predict_logits(model: nn.Module, feats: Features, collate: Any, batch_size: int,
                   device: torch.device, autocast: Any = None, progress: str | None = None) -> np.ndarray:
    """Logits for every item, batched longest-first, returned in the original order.

    ``progress``: a bar description to show a bar (ETA, examples/s); None for no bar.
    """
    model.eval()
    out: list[np.ndarray] = [np.empty(0)] * len(feats)
    batches = sorted_batches(feats.lengths, batch_size)
    for idx in track(batches, len(feats), progress or "", progress is None, sizes=map(len, batches)):
        batch = collate([{k: v for k, v in feats[i].items() if k != "labels"} for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast() if autocast is not None else _null():
            logits = model(**batch).logits.float().cpu().numpy()
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return np.stack(out)


class _null:
    def __enter__(self) -> None: ...
    def __exit__(self, *a: Any) -> None: ...


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    t = torch.from_numpy(logits)
    return float(nn.functional.cross_entropy(t, torch.from_numpy(labels)).item())


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray | None:
    """``train.class_weight`` on the training labels: None for "none"; for "balanced",
    sklearn's n_samples / (n_classes * count_c) over the classes present (a class absent from
    training is never a target, so its weight, 1.0, never counts). Indexed by label id."""
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    present = counts > 0
    w = np.ones(len(counts))
    w[present] = len(labels) / (present.sum() * counts[present])
    return w


def training_loss(logits: torch.Tensor, labels: torch.Tensor, weights: np.ndarray | None) -> torch.Tensor:
    """Cross-entropy, each example's times its class's weight when ``weights`` is given, averaged
    over the batch: unbiased for the balanced loss, unlike PyTorch's ``weight=`` mean (divided by
    the batch's weight sum, which cancels the weights in a batch of one class)."""
    if weights is None:
        return nn.functional.cross_entropy(logits.float(), labels)
    losses = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    return (losses * torch.as_tensor(weights, dtype=losses.dtype, device=losses.device)[labels]).mean()


def feature_labels(feats: Features) -> np.ndarray:
    return np.asarray([x["labels"] for x in feats.items], dtype=np.int64)


def epoch_record(epoch: int, loss: float | None, logits: np.ndarray, labels: np.ndarray) -> EpochRecord:
    pred = logits.argmax(-1)
    from sklearn.metrics import f1_score

    return EpochRecord(
        epoch=epoch,
        train_loss=loss,
        eval_loss=cross_entropy(logits, labels),
        accuracy=float((pred == labels).mean()),
        macro_f1=float(f1_score(labels, pred, average="macro", labels=list(range(logits.shape[1])), zero_division=0)),
    )


@dataclass
class CheckpointPlan:
    """Where and how often ``fit`` checkpoints, and the checkpoint it resumes from (if any)."""

    directory: Path  # the method's output folder
    every: int = 0  # optimizer steps between checkpoints; 0 = at epoch ends only
    keep: int = 2
    resume: Resumed | None = None


def _restore_outcome(prog: Progress) -> FitOutcome:
    return FitOutcome(epochs=[EpochRecord.model_validate(e) for e in prog.epochs], train_s=prog.train_s,
                      eval_s=prog.eval_s, train_examples=prog.train_examples, eval_examples=prog.eval_examples)


def _sync_progress(prog: Progress, outcome: FitOutcome) -> None:
    prog.train_s, prog.eval_s = outcome.train_s, outcome.eval_s
    prog.train_examples, prog.eval_examples = outcome.train_examples, outcome.eval_examples
    prog.epochs = [e.model_dump(mode="json") for e in outcome.epochs]


def start_from(ckpt: CheckpointPlan | None, opt: Any, sched: Any) -> tuple[Progress, FitOutcome, Resumed | None]:
    """Where a training loop starts: from scratch, or from ``ckpt.resume`` (optimizer and scheduler
    loaded here). The returned checkpoint, if any, still has random generators to restore just
    before the next step (a mid-epoch checkpoint); an epoch-end one has them restored already.
    """
    resumed = ckpt.resume if ckpt is not None else None
    if resumed is None:
        return Progress(), FitOutcome(), None
    opt.load_state_dict(resumed.optimizer)
    sched.load_state_dict(resumed.scheduler)
    prog = resumed.progress
    if prog.batches_done == 0:  # saved at an epoch end: generators as they were before the next epoch
        restore_rng(resumed)
        resumed = None
    return prog, _restore_outcome(prog), resumed


def epoch_line(label: str, rec: EpochRecord, epochs: int) -> str:
    """The epoch's metrics as one line, so the last metric stays on screen after its bar."""
    return f"{label} epoch {rec.epoch}/{epochs}: " + metrics_text(
        {"train loss": rec.train_loss, "eval loss": rec.eval_loss, "acc": rec.accuracy, "macro-F1": rec.macro_f1})


def fit(model: nn.Module, train: Features, evalset: Features, collate: Any, lr: float,
        tcfg: TrainConfig, acc: Accelerator, label: str, quiet: bool,
        ckpt: CheckpointPlan | None = None, lr_scale: LrScale | None = None,
        after_step: StepHook | None = None) -> tuple[nn.Module, FitOutcome]:
    """Train ``model``'s trainable parameters; returns the unwrapped model and what happened.

    ``lr_scale``: the method's per-parameter learning-rate multiples (``Method.lr_scale``);
    ``after_step``: the method's per-step hook (``Method.after_step``). Details in :func:`_fit`.
    """
    # before prepare: DDP/FSDP wrap what is there
    with cpu_training(model, acc.device.type, acc.mixed_precision != "no") as dropout:
        return _fit(model, train, evalset, collate, lr, tcfg, acc, label, quiet, ckpt, lr_scale, after_step, dropout)


def _fit(model: nn.Module, train: Features, evalset: Features, collate: Any, lr: float,
         tcfg: TrainConfig, acc: Accelerator, label: str, quiet: bool,
         ckpt: CheckpointPlan | None = None, lr_scale: LrScale | None = None,
         after_step: StepHook | None = None, dropout: str | None = None) -> tuple[nn.Module, FitOutcome]:
    """The loop of :func:`fit` (``dropout``: which sampler :func:`fit` put in, for the outcome).

    With ``ckpt``, a checkpoint is written every ``ckpt.every`` optimizer steps and at each epoch
    end; with ``ckpt.resume``, training continues from that checkpoint exactly as if never stopped:
    the batches already trained in the epoch are skipped (the order is a function of seed and
    epoch) and the random generators are restored just before the next step runs.
    """
    n_proc = acc.num_processes  # batch_size is per process, as Trainer's per_device_train_batch_size
    sampler = LengthGroupedBatches(train.lengths, tcfg.batch_size, tcfg.seed, tcfg.group_by_length, n_proc)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate)
    steps = math.ceil(math.ceil(len(sampler) / n_proc) / tcfg.grad_accum) * tcfg.epochs
    opt, sched = make_optimizer(model, lr, tcfg, steps, n_proc, lr_scale)
    wrapped, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    labels = feature_labels(evalset)
    prog, outcome, resumed = start_from(ckpt, opt, sched)
    outcome.dropout = dropout
    if not acc.is_main_process:  # a checkpoint holds the epoch's running sums of all processes: rank 0 carries them on
        prog.loss_sum, prog.seen = 0.0, 0
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    weights = class_weights(feature_labels(train), tcfg.class_weight)
    outcome.class_weights = None if weights is None else weights.tolist()
    # each optimizer step's seconds since this process started (peftlab.infra.eta skips the warm-up ones)
    step_s: list[float] = []
    last_step_at, timed_step0, train_s_before = time.perf_counter(), prog.step, outcome.train_s

    def checkpoint() -> None:
        if ckpt is None:
            return
        rngs = rank_rng_states(acc.device)  # a collective: every process's generators, for rank 0 to save
        seen, loss_sum = global_sums(acc, prog.seen, prog.loss_sum)  # another: the sums of all processes
        if acc.is_main_process:
            _sync_progress(prog, outcome)
            saved = prog if n_proc == 1 else replace(prog, seen=int(seen), loss_sum=loss_sum)
            save_checkpoint(ckpt.directory, acc.unwrap_model(wrapped), opt, sched, saved, ckpt.keep, rank_rngs=rngs)

    for epoch in range(prog.epoch, tcfg.epochs + 1):
        sampler.epoch = epoch - 1  # the data order of this epoch, also when resuming mid-way
        wrapped.train()
        t0 = time.perf_counter()
        silent = quiet or not acc.is_local_main_process
        bar = progress_bar(len(train), f"{label} epoch {epoch}/{tcfg.epochs}", silent)
        bar.update(prog.seen)  # the bar counts the examples of all processes (a checkpoint holds their sum)
        last = outcome.epochs[-1] if outcome.epochs else None
        for i, batch in enumerate(loader):
            if i < prog.batches_done:
                continue
            if resumed is not None:
                restore_rng(resumed)
                resumed = None
            with acc.accumulate(wrapped):
                if weights is None:
                    loss = wrapped(**batch).loss
                else:  # the model's own loss is unweighted: compute it here from the logits
                    logits = wrapped(**{k: v for k, v in batch.items() if k != "labels"}).logits
                    loss = training_loss(logits, batch["labels"], weights)
                if not all_finite(acc, loss):  # every process stops together (no all-reduce left waiting)
                    outcome.nan_loss = True
                    break
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(trainable, tcfg.max_grad_norm)
                opt.step()
                sched.step()
                if after_step is not None and acc.sync_gradients:  # a real step, gradients not yet cleared
                    after_step(acc.unwrap_model(wrapped), prog.step + 1, steps)
                opt.zero_grad(set_to_none=True)
            n = batch["labels"].shape[0]
            prog.loss_sum, prog.seen, prog.batches_done = prog.loss_sum + float(loss.detach()) * n, prog.seen + n, i + 1
            # refresh=False: drawn by update's timed redraw (mininterval), not redrawn every step (~130 us)
            bar.set_postfix_str(metrics_text({"loss": prog.loss_sum / prog.seen, "last eval acc": last and last.accuracy}),
                                refresh=False)
            bar.update(n * n_proc)
            if acc.sync_gradients:
                prog.step += 1
                if len(step_s) < WARMUP_STEPS + TIMED_STEPS:
                    now = time.perf_counter()
                    step_s.append(now - last_step_at)
                    last_step_at = now
                    if len(step_s) == WARMUP_STEPS + TIMED_STEPS:  # the early time estimate, printed once
                        rest = estimate_total_s(step_s, steps - timed_step0)
                        outcome.estimated_train_s = None if rest is None else train_s_before + rest
                        say(silent, eta_line(label, outcome.estimated_train_s or 0.0, steps))
                if ckpt is not None and ckpt.every and prog.step % ckpt.every == 0 and i + 1 < len(loader):
                    outcome.train_s += time.perf_counter() - t0
                    checkpoint()
                    t0 = time.perf_counter()
        bar.close()
        outcome.train_s += time.perf_counter() - t0
        seen, loss_sum = global_sums(acc, prog.seen, prog.loss_sum)  # over all processes
        outcome.train_examples += int(seen)
        if outcome.nan_loss or tcfg.eval_every_epoch or epoch == tcfg.epochs:
            model_u = acc.unwrap_model(wrapped)
            t1 = time.perf_counter()
            logits = predict_logits(model_u, evalset, collate, tcfg.eval_batch_size, acc.device, acc.autocast,
                                    None if silent else f"{label} eval {epoch}/{tcfg.epochs}")
            outcome.eval_s += time.perf_counter() - t1
            outcome.eval_examples += len(evalset)
            outcome.logits = logits
            outcome.epochs.append(epoch_record(epoch, loss_sum / seen if seen else None, logits, labels))
            say(silent, epoch_line(label, outcome.epochs[-1], tcfg.epochs))
        if outcome.nan_loss:
            break
        prog.epoch, prog.batches_done, prog.loss_sum, prog.seen = epoch + 1, 0, 0.0, 0
        if epoch < tcfg.epochs:  # after the last one the adapter itself is saved next
            checkpoint()
    return acc.unwrap_model(wrapped), outcome
