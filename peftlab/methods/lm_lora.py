"""``lm_lora``: LoRA on a causal LM trained to *say* the label's verbalizer, then scored exactly
as in-context classification (``icl``): the same templates, prompts and verbalizer scoring.

This is the second way to fine-tune a causal LM for classification, next to ``lora`` /
``qlora`` with a sequence-classification head (set ``backbone`` on those rows). The loss is
the cross-entropy of the gold label's first verbalizer given the zero-shot prompt; prompt tokens
are masked out, and the output head runs only at the answer positions
(:mod:`peftlab.icl.answer_loss`). ``quantize: 4bit`` makes it QLoRA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, TaskType, get_peft_model
from pydantic import Field

from peftlab.infra.config_base import PositiveFloat
from peftlab.icl.answer_loss import answer_loss
from peftlab.methods.base import Readme
from peftlab.methods.icl import Icl, IclParams
from peftlab.methods.lora import default_targets
from peftlab.results import EpochRecord


class LmLoraParams(IclParams):
    method: Literal["lm_lora"] = "lm_lora"  # type: ignore[assignment]
    class_weight_unreachable = "lm_lora trains on its answer tokens' loss"
    lr: PositiveFloat = 2e-4
    r: int = Field(default=8, ge=1)
    alpha: PositiveFloat = 16.0
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class LmLora(Icl):
    name = "lm_lora"
    Params = LmLoraParams
    readme = Readme(
        on="causal LMs",
        trains=("LoRA on the LM, trained to say the gold label's verbalizer, then scored as `icl` (`quantize: "
                "4bit`: QLoRA)"),
        closed_form="none (counted from the model)",
        via="peft",
    )
    saves_adapter = True

    def prepare_lm(self, model: Any, params: LmLoraParams, ctx: Any) -> tuple[Any, Any]:
        model = add_lora(model, params)
        return model, train_verbalizer(model, params, ctx)

    def derived_trainable(self, params: Any, spec: Any) -> int:
        raise NotImplementedError("counted from the model; the closed forms cover classifier heads")

    def save(self, model: Any, params: Any, directory: Path) -> None:
        model.save_pretrained(str(directory))  # peft's format: PeftModel.from_pretrained loads it


def add_lora(model: Any, params: LmLoraParams) -> Any:
    """The causal LM wrapped by peft with the row's LoRA adapters (everything else frozen)."""
    conf = LoraConfig(task_type=TaskType.CAUSAL_LM, r=params.r, lora_alpha=params.alpha,
                      lora_dropout=params.dropout,
                      target_modules=params.target_modules or default_targets(model.config.model_type))
    return get_peft_model(model, conf)


def training_rows(ctx: Any) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per training example: the zero-shot prompt and the gold label's
    first verbalizer, tokenised as the scorer does."""
    from peftlab.icl.scoring import encode_requests

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
    from peftlab.runners.train import FitOutcome, make_optimizer

    tcfg = ctx.cfg.train
    epochs = params.epochs or tcfg.epochs
    rows = training_rows(ctx)
    per_epoch = math.ceil(len(rows) / tcfg.batch_size)
    opt, sched = make_optimizer(model, params.lr, tcfg, per_epoch * epochs)
    gen = torch.Generator().manual_seed(tcfg.seed)
    pad = ctx.prompting.tokenizer.pad_token_id
    outcome = FitOutcome()
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
