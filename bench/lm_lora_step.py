"""One ``lm_lora`` training step on SmolLM2-135M: the LM head over every position (the old path,
HF's ``model(**batch).loss``) against the head only at the answer positions
(:func:`peftlab.methods.lm_lora.answer_loss`, what ``lm_lora`` now trains with), next to a ``lora``
step with a sequence-classification head on the same model and the same token batch.

A step is what ``train_verbalizer`` does per mini-batch: forward, loss, backward, gradient
clipping, AdamW step, zero_grad. The batch: ``--batch-size`` MultiNLI training pairs rendered as
``lm_lora`` trains on them (template ``nli``, plain prompts, zero-shot prompt + the gold label's
verbalizer), the ones whose length is closest to ``--tokens`` among the first 300 (so the batch
is a ~100-token prompt with little padding). The three steps run in interleaved rounds (rotating
order, ``bench/benchkit.interleaved``) with ``torch.set_num_threads(--threads)``; each side's
median CPU seconds per step is reported (wall seconds too), so the ratios survive a machine
shared with other jobs. Also reported: the two lm_lora losses on the batch (they must agree) and
the LM head's share of the model's weights.

Usage (from the repository root; bench/run_all runs it with its defaults):

    python bench/lm_lora_step.py [--rounds 7] [--batch-size 8] [--tokens 100] [--threads 1] [--quick]

Replaces the "lm_lora training step: answer-only head" section of BENCHMARKS.md. Skips (exit 0)
when ../shared/data/mnli is absent (the package never needs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import benchkit
import torch

from peftlab.backbones.loaders import load_classifier, load_tokenizer
from peftlab.config import BackboneConfig, TrainConfig, validate_raw
from peftlab.methods.lm_lora import answer_loss, full_head_loss
from peftlab.backbones.causal_lm import load_causal_lm
from peftlab.methods.icl import IclParams
from peftlab.methods.lm_lora import LmLoraParams, add_lora
from peftlab.runners.lm_fit import _batch, training_rows
from peftlab.methods.lora import Lora, LoraParams
from peftlab.estimate.params import arch_spec
from peftlab.runners.icl import make_prompting
from peftlab.runners.train import make_optimizer
from peftlab.tasks import load_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icl_mnli import DATA, LABELS, task  # noqa: E402  (the MultiNLI files and label names)

SECTION = "## lm_lora training step: answer-only head"
LM = "smollm2-135m"
POOL = 300  # training pairs the batch is picked from


def pick_rows(tok, n: int, tokens: int) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """``n`` (prompt ids, answer ids) rows closest to ``tokens`` long, and their gold labels."""
    cfg = validate_raw({"backbone": LM, "task": task(POOL, 3 * 2), "methods": ["icl"]})
    data = load_task(cfg.task, 0)
    p = make_prompting(IclParams(template="nli", chat="off", max_demo_chars=None), tok, data.label_names)
    rows = training_rows(SimpleNamespace(prompting=p, data=data))
    best = sorted(range(len(rows)), key=lambda i: (abs(len(rows[i][0]) + len(rows[i][1]) - tokens), i))[:n]
    return [rows[i] for i in best], [int(data.train.labels[i]) for i in best]


def step_fn(model, loss_of, batch: dict[str, torch.Tensor], tcfg: TrainConfig):
    """One training step of ``model`` as ``train_verbalizer`` / the training loop take it."""
    opt, _ = make_optimizer(model, 1e-4, tcfg, 1000)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        loss = loss_of(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are reported")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=100, help="target length of prompt + answer")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the measure of work)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, batch 2, 40 tokens")
    args = ap.parse_args()
    rounds, bs, tokens, warmup = (2, 2, 40, 1) if args.quick else (args.rounds, args.batch_size, args.tokens, 2)
    if not DATA.is_dir():
        print(f"skip: {DATA} not found (benchmark data is optional)")
        return 0
    torch.set_num_threads(args.threads)
    bb = BackboneConfig(name=LM)
    tok = load_tokenizer(bb)
    rows, gold = pick_rows(tok, bs, tokens)
    batch = _batch(rows, tok.pad_token_id, torch.device("cpu"))
    cls_batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                 "labels": torch.tensor(gold)}
    lm_params = LmLoraParams(r=8, alpha=16, dropout=0.05)
    torch.manual_seed(0)
    lm = add_lora(load_causal_lm(bb, "none", torch.device("cpu")), lm_params).train()
    clf = load_classifier(bb, LABELS, tok)
    clf = Lora().prepare(clf, LoraParams(r=8, alpha=16, dropout=0.05), arch_spec(clf.config)).train()
    with torch.no_grad():
        torch.manual_seed(0)
        l_full = float(full_head_loss(lm, batch))
        torch.manual_seed(0)  # the same dropout masks
        l_fast = float(answer_loss(lm, batch))
    tcfg = TrainConfig()
    fns = {"full head": step_fn(lm, full_head_loss, batch, tcfg),
           "answer head": step_fn(lm, answer_loss, batch, tcfg),
           "classification head": step_fn(clf, lambda m, b: m(**b).loss, cls_batch, tcfg)}
    got = benchkit.interleaved(fns, rounds, warmup=warmup)
    cpu = {k: benchkit.median(v["cpu"]) for k, v in got.items()}
    wall = {k: benchkit.median(v["wall"]) for k, v in got.items()}
    head = lm.get_output_embeddings().weight.numel()
    body = "\n".join([
        SECTION, "",
        f"One training step (forward, loss, backward, clipping, AdamW, zero_grad) of LoRA r=8 (alpha 16, dropout "
        f"0.05, peft's q/v targets) on SmolLM2-135M-Instruct (`{LM}`, fp32) at batch {bs}: {bs} MultiNLI training "
        f"pairs rendered as `lm_lora` trains on them (template `nli`, plain prompt + gold verbalizer), picked from "
        f"the first {POOL} for a length close to {tokens} tokens (padded width {batch['input_ids'].shape[1]}, "
        f"{int(batch['attention_mask'].sum())} real tokens, {int((batch['labels'] != -100).sum())} answer tokens). "
        f"`full head`: HF's `model(**batch).loss`, the LM head ({head / 1e6:.1f}M weights, "
        f"{head / sum(p.numel() for p in lm.parameters()):.0%} of the model's) over every position (lm_lora before); "
        f"`answer head`: `peftlab.methods.lm_lora.answer_loss`, the head only where an answer token is predicted (lm_lora now); "
        f"`classification head`: peftlab's `lora` with a sequence-classification head on the same model and "
        f"token batch. Losses on the batch: full head {l_full:.6f}, answer head {l_fast:.6f}.",
        f"Command: `{benchkit.command('lm_lora_step.py')}`; hardware: {benchkit.hardware(args.threads)}; "
        f"the machine was shared with other jobs: the three steps ran in {rounds} interleaved rounds (rotating "
        f"order, after {warmup} warm-up round(s)) and each shows its median; CPU seconds of the process are the "
        f"measure of work with one thread, wall seconds are pessimistic.",
        "",
        "| step | CPU s / step | wall s / step | CPU time vs answer head |",
        "|---|---|---|---|",
        *(f"| {k} | {cpu[k]:.3f} | {wall[k]:.3f} | {cpu[k] / cpu['answer head']:.2f}x |" for k in fns),
        "",
        f"Answer-only head: **{cpu['full head'] / cpu['answer head']:.2f}x** faster than the full head per step "
        f"(CPU time); an `lm_lora` step now costs **{cpu['answer head'] / cpu['classification head']:.2f}x** a "
        f"`lora` step with a classification head (before: {cpu['full head'] / cpu['classification head']:.2f}x).",
        "",
    ])
    benchkit.write_section(SECTION, body)
    return 0 if abs(l_full - l_fast) < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
