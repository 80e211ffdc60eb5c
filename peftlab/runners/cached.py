"""Train a head on cached features of a frozen backbone (linear probe).

The frozen backbone is run once over each split; the head's input is captured with a forward
pre-hook. Epochs then cost a few small matrix products instead of full forward passes.
:func:`fit_tensors` is the loop itself, on any in-memory inputs: image methods train with it too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from peftlab.config import TrainConfig
from peftlab.runners.batching import Features, sorted_batches
from peftlab.runners.progress import bar as progress_bar
from peftlab.runners.progress import metrics_text, say, track
from peftlab.runners.checkpoint import rank_rng_states, restore_rng, save_checkpoint
from peftlab.runners import data_parallel as dp
from peftlab.runners.train import (CheckpointPlan, FitOutcome, _sync_progress, class_weights, epoch_line, epoch_record,
                                   feature_labels, make_optimizer, start_from, training_loss)


@torch.no_grad()
def head_inputs(model: nn.Module, head: nn.Module, feats: Features, collate: Any, batch_size: int,
                device: torch.device, is_decoder: bool, progress: str | None = None) -> torch.Tensor:
    """What ``head`` receives for each item, reduced to what the head actually reads.

    A 3-d input (batch, tokens, hidden) is cut to the token the head pools: the last non-pad
    token for decoders (as HF's *ForSequenceClassification does), the first for encoders
    (kept 3-d, since e.g. RoBERTa's head indexes ``[:, 0]`` itself).
    """
    model.eval()
    captured: list[torch.Tensor] = []

    def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach())

    handle = head.register_forward_pre_hook(grab)
    out: list[torch.Tensor | None] = [None] * len(feats)
    try:
        batches = sorted_batches(feats.lengths, batch_size)
        for idx in track(batches, len(feats), progress or "", progress is None, sizes=map(len, batches)):
            batch = collate([{k: v for k, v in feats[i].items() if k != "labels"} for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            captured.clear()
            model(**batch)
            x = captured[0].float()
            if x.ndim == 3:
                if is_decoder:
                    mask = batch["attention_mask"]
                    pos = (torch.arange(mask.shape[1], device=mask.device) * mask).argmax(-1)
                    x = x[torch.arange(x.shape[0], device=x.device), pos]
                else:
                    x = x[:, :1, :]
            for j, i in enumerate(idx):
                out[i] = x[j].cpu()
    finally:
        handle.remove()
    return torch.stack([t for t in out if t is not None])


def fit_head(model: nn.Module, head: nn.Module, train: Features, evalset: Features, collate: Any,
             lr: float, tcfg: TrainConfig, acc: Accelerator, is_decoder: bool, label: str = "head",
             quiet: bool = True) -> FitOutcome:
    """Extract features once, then train only ``head``.

    The training split's feature pass is training time. The eval split's is evaluation time: a
    prediction costs the backbone's forward pass plus the head's, so the row's eval throughput
    counts each eval example once over the feature pass and every head pass (the head alone, on
    cached features, reported 1.4 million examples/s on drugreview: no user ever sees that).
    """
    device = acc.device
    quiet = quiet or not acc.is_local_main_process
    t0 = time.perf_counter()
    x_train = head_inputs(model, head, train, collate, tcfg.eval_batch_size, device, is_decoder,
                          None if quiet else f"{label} features (train)")
    t1 = time.perf_counter()
    x_eval = head_inputs(model, head, evalset, collate, tcfg.eval_batch_size, device, is_decoder,
                         None if quiet else f"{label} features (eval)")
    eval_feature_s = time.perf_counter() - t1
    outcome = fit_tensors(head, head, x_train, feature_labels(train), x_eval, feature_labels(evalset),
                          lr, tcfg, device, start_s=t1 - t0, label=label, quiet=quiet)
    return with_feature_pass(outcome, eval_feature_s, len(evalset))


def with_feature_pass(outcome: FitOutcome, feature_s: float, n_eval: int) -> FitOutcome:
    """``outcome`` with the eval split's feature pass in its evaluation time, and each eval example
    counted once: the per-epoch head passes reuse the same features, so counting them again
    would divide one backbone pass among many cheap matrix products."""
    outcome.eval_s += feature_s
    outcome.eval_examples = n_eval
    return outcome


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each training batch; a last batch of one example joins the one before.

    Batch norm cannot train on a single example once the spatial size is 1x1 (EfficientNet at
    32 px, any pooled feature), and a one-example step is mostly noise anyway.
    """
    starts = list(range(0, n, batch_size))
    if batch_size > 1 and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def fit_tensors(trainable: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                x_train: torch.Tensor, y_train: np.ndarray, x_eval: torch.Tensor, y_eval: np.ndarray,
                lr: float, tcfg: TrainConfig, device: torch.device, start_s: float = 0.0,
                train_mode: Callable[[], Any] | None = None, label: str = "head",
                quiet: bool = True, ckpt: CheckpointPlan | None = None) -> FitOutcome:
    """Train ``trainable``'s parameters on in-memory inputs (cached features, or pixel tensors).

    ``forward`` maps a batch of inputs to logits; ``train_mode`` (default ``trainable.train()``)
    lets a caller keep parts in eval mode (frozen batch norms). ``start_s`` is time already
    spent for this training (the one pass that computed cached features).

    ``ckpt`` checkpoints and resumes exactly as :func:`peftlab.runners.train.fit` does (the same
    files; buffers included, for batch-norm statistics). The order of epoch ``e`` is the ``e``-th
    permutation drawn from a generator seeded with ``tcfg.seed``, so a resumed run replays the
    draws of the epochs before it.
    """
    y_train_t = torch.from_numpy(np.asarray(y_train)).to(device)
    n = len(x_train)
    rank, processes = dp.group()
    batches = step_batches(n, tcfg.batch_size, rank, processes)
    steps = math.ceil(len(batches) / tcfg.grad_accum) * tcfg.epochs
    opt, sched = make_optimizer(trainable, lr, tcfg, steps)
    prog, outcome, resumed = start_from(ckpt, opt, sched)
    dp.broadcast_state(trainable)  # after a resume too: every process continues from rank 0's tensors
    if rank > 0:  # a checkpoint holds the sums over all processes (see checkpoint() below)
        prog.loss_sum, prog.seen = 0.0, 0
    quiet = quiet or rank != 0
    if ckpt is None or ckpt.resume is None:
        outcome.train_s = start_s  # the one pass over the backbone is part of training's cost
    gen = torch.Generator().manual_seed(tcfg.seed)
    for _ in range(prog.epoch - 1):
        torch.randperm(n, generator=gen)
    params = [p for p in trainable.parameters() if p.requires_grad]
    weights = class_weights(y_train, tcfg.class_weight)
    outcome.class_weights = None if weights is None else weights.tolist()

    def checkpoint() -> None:
        if ckpt is None:
            return
        _sync_progress(prog, outcome)
        saved = prog
        if processes > 1:  # the epoch's running sums of all processes: rank 0 alone carries them on after a resume
            loss_sum, seen = dp.summed(prog.loss_sum, prog.seen, device=device)
            saved = replace(prog, loss_sum=loss_sum, seen=int(seen))
        rngs = rank_rng_states(device)  # every process's generators, for rank 0 to save
        if rank == 0:
            save_checkpoint(ckpt.directory, trainable, opt, sched, saved, ckpt.keep, buffers=True, rank_rngs=rngs)

    bar = progress_bar(tcfg.epochs, f"{label} head epochs", quiet, unit="epoch")
    bar.update(prog.epoch - 1)
    for epoch in range(prog.epoch, tcfg.epochs + 1):
        (train_mode or trainable.train)()
        t1 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        for step, positions in enumerate(batches):
            if step < prog.batches_done:
                continue
            if resumed is not None:
                restore_rng(resumed)
                resumed = None
            idx = order[positions]
            logits = forward(x_train[idx].to(device))
            loss = training_loss(logits, y_train_t[idx.to(device)], weights)
            if not dp.finite_everywhere(loss):
                outcome.nan_loss = True
                break
            (loss / tcfg.grad_accum).backward()
            prog.loss_sum += float(loss.detach()) * len(idx)
            prog.seen, prog.batches_done = prog.seen + len(idx), step + 1
            last = step + 1 == len(batches)
            if (step + 1) % tcfg.grad_accum == 0 or last:
                dp.mean_gradients(params)
                torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                dp.broadcast_running_stats(trainable)
                prog.step += 1
                if ckpt is not None and ckpt.every and prog.step % ckpt.every == 0 and not last:
                    outcome.train_s += time.perf_counter() - t1
                    checkpoint()
                    t1 = time.perf_counter()
        outcome.train_s += time.perf_counter() - t1
        outcome.train_examples += n
        trainable.eval()
        t2 = time.perf_counter()
        logits_eval = predict_tensors(forward, x_eval, tcfg.eval_batch_size, device)
        outcome.eval_s += time.perf_counter() - t2
        outcome.eval_examples += len(x_eval)
        outcome.logits = logits_eval
        loss_sum, seen = (prog.loss_sum, n) if processes == 1 else dp.summed(prog.loss_sum, prog.seen, device=device)
        outcome.epochs.append(epoch_record(epoch, loss_sum / seen, logits_eval, np.asarray(y_eval)))
        bar.update(1)
        bar.set_postfix_str(metrics_text({"loss": loss_sum / seen, "eval acc": outcome.epochs[-1].accuracy}))
        if outcome.nan_loss:
            break
        prog.epoch, prog.batches_done, prog.loss_sum, prog.seen = epoch + 1, 0, 0.0, 0
        if epoch < tcfg.epochs:  # after the last one the method's own files are saved next
            checkpoint()
    bar.close()
    say(quiet, epoch_line(label, outcome.epochs[-1], tcfg.epochs))
    return outcome


def step_batches(n: int, batch_size: int, rank: int = 0, processes: int = 1) -> list[Any]:
    """What each training step takes from the epoch's order: slices in one process (batch_bounds),
    this process's positions under a launcher (``batch_size`` per process; data_parallel.rank_positions)."""
    if processes == 1:
        return [slice(s, e) for s, e in batch_bounds(n, batch_size)]
    return [torch.tensor(p) for p in dp.rank_positions(n, batch_size, processes, rank)]


@torch.no_grad()
def predict_tensors(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int,
                    device: torch.device) -> np.ndarray:
    """Logits for in-memory inputs, in batches, as float32 numpy."""
    out = [forward(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.empty((0, 0), dtype=np.float32)
