"""The loop that trains a causal LM to *say* the gold label's verbalizer (``lm_lora``), before scoring.

The method supplies the adapted LM (``Method.prepare_lm``) and the loss (``Method.lm_loss``); this
runner owns the optimizer loop, as :mod:`peftlab.runners.train` does for classifier heads. Each
training example becomes (zero-shot prompt ids, first verbalizer ids of the gold label), tokenised
as the scorer does, and only the answer tokens carry a label.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from peftlab.backbones.cpu_train import cpu_training
from peftlab.methods.lm_lora import LmLoraParams, answer_loss
from peftlab.icl.scoring import encode_requests
from peftlab.results import EpochRecord
from peftlab.runners.train import FitOutcome, make_optimizer


def training_rows(ctx: Any) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per training example: the zero-shot prompt and the gold label's
    first verbalizer, tokenised as the scorer does."""
    p, train = ctx.prompting, ctx.data.train
    contexts, answers = [], []
    for i in range(len(train)):
        demo = p.demo(train, i)  # clipped like a demonstration, so long reviews stay short
        contexts.append(p.context([], demo.text, demo.pair))
        answers.append([demo.answer])
    enc = encode_requests(p.tokenizer, contexts, answers)
    return [(c, a[0]) for c, a in zip(enc.contexts, enc.continuations)]


def _batch(rows: list[tuple[list[int], list[int]]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(c) + len(a) for c, a in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (c, a) in enumerate(rows):
        seq = c + a
        ids[r, : len(seq)] = torch.tensor(seq)
        labels[r, len(c) : len(seq)] = torch.tensor(a)  # loss on the answer tokens only
        mask[r, : len(seq)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def train_verbalizer(model: Any, params: LmLoraParams, ctx: Any,
                     loss_fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] = answer_loss) -> Any:
    """AdamW with warm-up/decay over ``epochs`` of shuffled mini-batches; returns a FitOutcome
    (training loss per epoch; evaluation is the scoring that follows). ``loss_fn(model, batch)``:
    the answer-only head by default; tests and bench/lm_lora_step.py pass the full-head one."""
    with cpu_training(model, torch.device(ctx.device).type, ctx.precision.mixed_precision != "no") as dropout:
        return _train_verbalizer(model, params, ctx, loss_fn, dropout)


def _train_verbalizer(model: Any, params: LmLoraParams, ctx: Any,
                      loss_fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor], dropout: str | None) -> Any:
    tcfg = ctx.cfg.train
    epochs = params.epochs or tcfg.epochs
    rows = training_rows(ctx)
    per_epoch = math.ceil(len(rows) / tcfg.batch_size)
    opt, sched = make_optimizer(model, params.lr, tcfg, per_epoch * epochs)
    gen = torch.Generator().manual_seed(tcfg.seed)
    pad = ctx.prompting.tokenizer.pad_token_id
    outcome = FitOutcome(dropout=dropout)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        total, seen = 0.0, 0
        order = torch.randperm(len(rows), generator=gen).tolist()
        for s in range(0, len(order), tcfg.batch_size):
            chunk = [rows[i] for i in order[s : s + tcfg.batch_size]]
            with ctx.precision.autocast():  # the loss itself comes out fp32 (autocast keeps cross-entropy fp32)
                loss = loss_fn(model, _batch(chunk, pad, ctx.device))
            if not torch.isfinite(loss):
                outcome.nan_loss = True
                break
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tcfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            total, seen = total + float(loss.detach()) * len(chunk), seen + len(chunk)
        outcome.epochs.append(EpochRecord(epoch=epoch, train_loss=total / seen if seen else None))
        outcome.train_examples += seen
        if outcome.nan_loss:
            break
    outcome.train_s = time.perf_counter() - t0
    model.eval()
    return outcome
