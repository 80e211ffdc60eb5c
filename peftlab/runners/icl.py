"""The ``icl`` runner: prompt a causal LM, score each label's verbalizers, report a RunResult.

One row = one method config; with several demonstration ``seeds`` every seed is a full pass over
the eval set, and the row reports the mean and spread of accuracy and macro-F1 (per-class report
and confusion matrix pooled over the seeds). Methods with ``runner = "icl"`` may first adapt the
LM (``Method.prepare_lm`` adds LoRA, ``Method.lm_loss`` names the verbalizer objective, and
:mod:`peftlab.runners.lm_fit` trains it); scoring is then identical.
Both follow ``train.mixed_precision`` as training does (peftlab.backbones.precision), probed at the LM's
own shapes; a quantised LM on CPU stays fp32 (``Icl.keeps_fp32``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import set_seed

from peftlab.backbones.loaders import load_tokenizer
from peftlab.config import BackboneConfig, ExperimentConfig
from peftlab.icl.calibration import CONTENT_FREE, calibrate, content_free_prior, label_scores, normalise, softmax
from peftlab.icl.demos import SELECTORS, minilm_embedder
from peftlab.icl.fit import Window, context_limit, fit_prompt
from peftlab.backbones.causal_lm import load_causal_lm
from peftlab.icl.reasoning import extract_answer, majority_vote, sample_chains
from peftlab.icl.scoring import Encoded, PrefixScorer, encode_requests
from peftlab.methods.icl import template_overrides
from peftlab.results.metrics import classification_metrics, is_collapsed, majority_class
from peftlab.estimate.params import count_params
from peftlab.prompts.template import Demo, PromptTemplate, answer_strings, load_template, render_context
from peftlab.results import ParamCounts, Predictions, RunResult, Timing, environment
from peftlab.runners.drift import lm_loss_record, reference_lm_loss
from peftlab.runners.measure import PeakMemory
from peftlab.backbones.precision import Precision
from peftlab.runners.lm_fit import train_verbalizer
from peftlab.runners.train import FitOutcome, make_accelerator, train_precision
from peftlab.tasks.base import Split, TaskData


@dataclass
class Prompting:
    """Everything that turns examples into prompts and label continuations."""

    template: PromptTemplate
    tokenizer: Any
    chat: bool
    #: scored continuations per label, in the task's label order
    answers: list[list[str]]
    max_demo_chars: int | None
    #: the model's context; None = never shorten (see peftlab.icl.fit for the rule)
    limit: int | None = None
    #: prompts shortened to fit ``limit`` so far (demonstrations dropped or input cut)
    shortened: int = 0

    def demo(self, split: Split, i: int) -> Demo:
        cut = self.max_demo_chars

        def clip(s: str) -> str:
            return s if cut is None or len(s) <= cut else s[:cut].rstrip() + "..."

        pair = None if split.pairs is None else clip(split.pairs[i])
        return Demo(clip(split.texts[i]), pair, self.answers[int(split.labels[i])][0])

    def context(self, demos: list[Demo], text: str, pair: str | None, suffix: str = "", generate: int = 0) -> str:
        """The prompt, shortened to fit the model's context when it does not (demonstrations
        first, then the input's beginning; never the template or the answer): peftlab.icl.fit.
        ``generate``: tokens to keep free for generation (reasoning mode) instead of an answer."""
        def render(ds: list[Demo], t: str, pr: str | None) -> str:
            return render_context(self.template, ds, t, pr, self.tokenizer if self.chat else None, suffix)

        if self.limit is None:
            return render(demos, text, pair)
        answers = ("",) if generate else tuple(w for ws in self.answers for w in ws)
        fitted = fit_prompt(render, self.tokenizer, Window(self.limit, answers, generate), demos, text, pair,
                            self.template.name)
        self.shortened += fitted.changed
        return fitted.prompt


def make_prompting(params: Any, tokenizer: Any, label_names: list[str], limit: int | None = None) -> Prompting:
    """``limit``: the model's context in tokens (``context_limit``); prompts are fitted into it."""
    tpl = load_template(params.template, template_overrides(params))
    chat = params.chat == "on" or (params.chat == "auto" and bool(getattr(tokenizer, "chat_template", None)))
    return Prompting(tpl, tokenizer, chat, answer_strings(tpl.for_labels(label_names), chat), params.max_demo_chars,
                     limit)


def verbalizer_scores(scorer: PrefixScorer, p: Prompting, contexts: list[str]) -> tuple[Encoded, list[list[float]]]:
    """The requests (every verbalizer after every context) and their summed log-likelihoods."""
    flat = [w for words in p.answers for w in words]
    enc = encode_requests(p.tokenizer, contexts, [flat] * len(contexts))
    return enc, scorer.score(enc)


def score_probs(scorer: PrefixScorer, p: Prompting, contexts: list[str], normalize: str, temperature: float) -> np.ndarray:
    """(n, labels) probabilities from every verbalizer's (normalised) log-likelihood."""
    enc, sums = verbalizer_scores(scorer, p, contexts)
    return label_probs(p, enc, sums, normalize, temperature)


def label_probs(p: Prompting, enc: Encoded, sums: list[list[float]], normalize: str, temperature: float) -> np.ndarray:
    """(n, labels) probabilities from :func:`verbalizer_scores`' log-likelihoods."""
    flat = [w for words in p.answers for w in words]
    owners = [lab for lab, words in enumerate(p.answers) for _ in words]
    scores = np.stack([
        label_scores([normalise(s, len(ids), len(w), normalize) for s, ids, w in zip(row, conts, flat)], owners, len(p.answers))
        for row, conts in zip(sums, enc.continuations)
    ])
    return softmax(scores, temperature)


def _pair(split: Split, i: int) -> str | None:
    return None if split.pairs is None else split.pairs[i]


class SeedPass(NamedTuple):
    """One pass over the eval split with one seed's demonstrations."""

    pred: np.ndarray  # (n,) label ids
    probs: np.ndarray  # (n, labels): scored probabilities, or the chains' vote shares (NaN: no chain answered)
    unanswered: int  # queries whose chains named no label (reasoning mode)
    #: (n, labels) the scored probabilities before contextual calibration (``calibrate: true``), else None
    raw_probs: np.ndarray | None = None


def predict_seed(model: Any, scorer: PrefixScorer, p: Prompting, params: Any, data: TaskData, seed: int,
                 embed: Any) -> SeedPass:
    """Predictions on the eval split with the demonstrations of ``seed``."""
    n = len(data.eval)
    chosen = SELECTORS.get(params.selection)(data.train, data.eval, params.shots, seed, embed) if params.shots else [[]] * n
    demos = [[p.demo(data.train, j) for j in idx] for idx in chosen]
    if params.reasoning != "none":
        return _reason(model, p, params, data, demos, seed)
    contexts = [p.context(demos[i], data.eval.texts[i], _pair(data.eval, i)) for i in range(n)]
    probs = score_probs(scorer, p, contexts, params.normalize, params.temperature)
    if not params.calibrate:
        return SeedPass(probs.argmax(-1), probs, 0)
    free = [p.context(demos[0], cf, cf if data.is_pair else None) for cf in CONTENT_FREE]
    fixed = calibrate(probs, content_free_prior(score_probs(scorer, p, free, params.normalize, params.temperature)))
    return SeedPass(fixed.argmax(-1), fixed, 0, probs)  # the raw ones too: the report shows before and after


def _reason(model: Any, p: Prompting, params: Any, data: TaskData, demos: list[list[Demo]],
            seed: int) -> SeedPass:
    """Chain of thought (one greedy chain) or self-consistency (majority over sampled chains).
    A query whose chains name no label falls back to the majority training class."""
    n_chains = params.samples if params.reasoning == "self_consistency" else 1
    prompts = [p.context(demos[i], data.eval.texts[i], _pair(data.eval, i), p.template.cot_trigger,
                         generate=params.max_new_tokens) for i in range(len(data.eval))]
    chains = sample_chains(model, p.tokenizer, prompts, n_chains, params.max_new_tokens, params.sample_temperature, seed)
    fallback, missing, pred, shares = majority_class(data.train.labels), 0, [], []
    k = len(p.answers)
    for texts in chains:
        answers = [extract_answer(t, p.answers, p.template.answer_prefix) for t in texts]
        vote = majority_vote(answers, k)
        missing += vote is None
        pred.append(fallback if vote is None else vote)
        counts = np.bincount([a for a in answers if a is not None and 0 <= a < k], minlength=k).astype(np.float64)
        shares.append(counts / counts.sum() if counts.sum() else np.full(k, np.nan))
    return SeedPass(np.asarray(pred), np.asarray(shares).reshape(len(chains), k), missing)


def seeds_to_run(params: Any) -> list[int]:
    """Zero-shot and nearest-neighbour prompts do not depend on the seed: run them once."""
    if params.shots == 0 or params.selection == "nearest":
        return params.seeds[:1]
    return list(params.seeds)


def run_icl(cfg: ExperimentConfig, method: Any, params: Any, data: TaskData, base: RunResult, quiet: bool,
            save: Callable[[Any], int] | None = None,
            record: Callable[[Predictions], None] | None = None) -> RunResult:
    """Load, (optionally adapt and ``save``), score every seed, ``record`` the per-example answers
    of every seed, and fill in ``base``; errors propagate (the caller turns them into a failed row)."""
    bb: BackboneConfig = cfg.backbone_for(params)
    set_seed(cfg.train.seed)
    device = make_accelerator(cfg.train).device
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(bb)
        model = load_causal_lm(bb, params.quantize, device)
        p = make_prompting(params, tokenizer, data.label_names, context_limit(model, tokenizer))
        precision = train_precision(cfg.train, lambda: model.config, method.keeps_fp32(params, device.type),
                                    tokens=params.batch_size * cfg.train.max_length)
        loss = method.lm_loss(params)
        # forgetting (issue 22): the shipped reference text's LM loss before and after adapting, out
        # of the row's wall time; only rows that train the LM (a prompt alone leaves it as it was)
        measure = loss is not None and cfg.train.drift
        t_ref = time.perf_counter()
        before = reference_lm_loss(model, tokenizer, device, p.limit, precision.autocast) if measure else None
        ref_s = time.perf_counter() - t_ref
        model = method.prepare_lm(model, params)
        fit = (train_verbalizer(model, params, LmContext(cfg, p, data, device, quiet, precision), loss)
               if loss is not None else FitOutcome())
        t_ref = time.perf_counter()
        lm_loss = (lm_loss_record(before, reference_lm_loss(model, tokenizer, device, p.limit, precision.autocast))
                   if before is not None else None)
        ref_s += time.perf_counter() - t_ref
        trainable, total = count_params(model)
        adapter_bytes = save(model) if save is not None else None
        embed = minilm_embedder(params.embedder) if params.shots and params.selection == "nearest" else None
        scorer = PrefixScorer(model, tokenizer.pad_token_id, params.batch_size)
        t1 = time.perf_counter()
        seeds = seeds_to_run(params)
        with precision.autocast():  # scoring, calibration and generation alike
            runs = [predict_seed(model, scorer, p, params, data, s, embed) for s in seeds]
        eval_s = time.perf_counter() - t1
        wall = time.perf_counter() - t0 - ref_s
    if record is not None:
        raw = [r.raw_probs for r in runs]
        record(Predictions.of(data.label_names, data.eval.labels, [r.pred for r in runs], [r.probs for r in runs], seeds,
                              None if any(q is None for q in raw) else raw))
    return base.model_copy(update=dict(
        **summarise(data, [r.pred for r in runs], seeds),
        params=ParamCounts(trainable=trainable, total=total, percent_trainable=100.0 * trainable / total),
        timing=Timing(wall_s=wall, train_s=fit.train_s, eval_s=eval_s,
                      train_examples_per_s=fit.train_examples / fit.train_s if fit.train_s else None,
                      eval_examples_per_s=len(data.eval) * len(seeds) / eval_s if eval_s else None),
        epochs=fit.epochs, peak_memory_bytes=mem.peak_bytes, memory_kind=mem.kind, adapter_bytes=adapter_bytes,
        flags=_flags(runs, data.num_labels, fit) + (["prompt_shortened"] if p.shortened else []),
        environment=environment(str(device), fit.dropout),
        **precision.result_fields(),
        **({"details": {**base.details, "lm_loss": lm_loss}} if lm_loss is not None else {}),
    ))


def summarise(data: TaskData, preds: list[np.ndarray], seeds: list[int]) -> dict[str, Any]:
    """Mean and spread over seeds; per-class report and confusion matrix of the pooled predictions."""
    per_seed = [classification_metrics(data.eval.labels, pr, data.label_names) for pr in preds]
    pooled = classification_metrics(np.tile(data.eval.labels, len(preds)), np.concatenate(preds), data.label_names)
    acc = np.array([m["accuracy"] for m in per_seed])
    f1 = np.array([m["macro_f1"] for m in per_seed])
    return dict(
        accuracy=float(acc.mean()), macro_f1=float(f1.mean()),
        accuracy_std=float(acc.std(ddof=1)) if len(acc) > 1 else None,
        macro_f1_std=float(f1.std(ddof=1)) if len(f1) > 1 else None,
        seeds=seeds, seed_accuracy=acc.tolist(), seed_macro_f1=f1.tolist(),
        per_class=pooled["per_class"], confusion_matrix=pooled["confusion_matrix"],
    )


def _flags(runs: list[SeedPass], num_labels: int, fit: Any) -> list[str]:
    flags = []
    if any(is_collapsed(r.pred, num_labels) for r in runs):
        flags.append("collapsed")
    if any(r.unanswered for r in runs):
        flags.append("unanswered")  # some chains named no label: majority class used
    if fit.nan_loss:
        flags.append("nan_loss")
    return flags


@dataclass
class LmContext:
    """What :func:`peftlab.runners.lm_fit.train_verbalizer` uses to train the LM before scoring."""

    cfg: ExperimentConfig
    prompting: Prompting
    data: TaskData
    device: torch.device
    quiet: bool
    #: what training computes in (the same as the scoring after it)
    precision: Precision = field(default_factory=lambda: Precision("fp32", "default"))
