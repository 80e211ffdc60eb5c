"""Epoch time with cached frozen features vs recomputing the frozen backbone every epoch.

Usage: python bench/cached_features.py [--only text_lp image_lp coop] [--rounds 2] [--threads 1] [--quick]

Three cases, each trained by peftlab's own loop (``peftlab.runners.cached.fit_tensors``) twice
with the same head, seed, batch order and hyperparameters; only what one input is differs:
  * cached: the frozen backbone's outputs, computed once (what peftlab does);
  * recompute: the input is the raw example and every step runs the frozen backbone again
    (in eval mode, without gradients: the cheapest honest way not to cache).
Cases: text linear probe (MiniLM-L6 on a MultiNLI subset from ../shared/data/mnli, or the
packaged drug reviews when that is absent), image linear probe (EfficientNet-Lite0 on Fashion-MNIST,
96 px as configs/fashion_mnist.yaml), and CoOp on a CLIP with ViT-B/32 dimensions and random
weights (no CLIP weights ship here; time does not depend on weight values). CoOp learns the text
prompt, so its text tower runs every step on both paths: only the image tower is cached.
Rounds alternate one recomputing epoch with ``--cached-reps`` cached epochs; medians reported.
Replaces the "Cached features" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
import numpy as np
import torch
from torch import nn

from peftlab.config import TrainConfig, validate_raw
from peftlab.runners.cached import fit_tensors

SECTION = "## Cached features: linear probe and CoOp"
MNLI = benchkit.SHARED / "data" / "mnli"
WORK = benchkit.ROOT / "runs" / "bench_cached"


@dataclass
class Way:
    """One way to train: inputs (train, eval), inputs -> logits, and the train-mode switch."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    x_train: torch.Tensor
    x_eval: torch.Tensor
    train_mode: Callable[[], Any] | None = None


@dataclass
class Case:
    name: str
    what: str
    trainable: nn.Module
    cached: Way
    recompute: Way
    feature_s: float  # the one pass over the frozen backbone (train + eval splits)
    y_train: np.ndarray
    y_eval: np.ndarray
    lr: float
    tcfg: TrainConfig


def one_epoch(case: Case, path: Way, init: dict[str, torch.Tensor]) -> tuple[float, float, np.ndarray]:
    """Train one epoch from the same initial state; (train seconds, eval seconds, eval logits)."""
    case.trainable.load_state_dict(init)
    out = fit_tensors(case.trainable, path.forward, path.x_train, case.y_train, path.x_eval, case.y_eval,
                      case.lr, case.tcfg, torch.device("cpu"), train_mode=path.train_mode)
    assert out.logits is not None
    return out.train_s, out.eval_s, out.logits


def measure(case: Case, rounds: int, cached_reps: int) -> dict[str, Any]:
    init = copy.deepcopy(case.trainable.state_dict())
    rec: list[tuple[float, float]] = []
    cac: list[tuple[float, float]] = []
    logits: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        *s, logits["recompute"] = one_epoch(case, case.recompute, init)
        rec.append((s[0], s[1]))
        for _ in range(cached_reps):
            *s, logits["cached"] = one_epoch(case, case.cached, init)
            cac.append((s[0], s[1]))
    pred = {k: v.argmax(-1) for k, v in logits.items()}
    r, c = benchkit.median([t for t, _ in rec]), benchkit.median([t for t, _ in cac])
    # an epoch with its evaluation: recomputing runs the backbone over both splits every epoch,
    # caching once (the feature pass) and then only the head
    r_eval, c_eval = benchkit.median([e for _, e in rec]), benchkit.median([e for _, e in cac])
    first = (r + r_eval) / (case.feature_s + c + c_eval)
    return {"case": case.name, "what": case.what, "recompute_epoch_s": r, "cached_epoch_s": c,
            "recompute_eval_s": r_eval, "cached_eval_s": c_eval,
            "feature_pass_s": case.feature_s, "speedup_later": r / c, "speedup_first": first,
            "speedup_later_with_eval": (r + r_eval) / (c + c_eval),
            "agreement": float((pred["recompute"] == pred["cached"]).mean()),
            "max_logit_diff": float(np.abs(logits["recompute"] - logits["cached"]).max()),
            "acc_recompute": float((pred["recompute"] == case.y_eval).mean()),
            "acc_cached": float((pred["cached"] == case.y_eval).mean()),
            "n_train": len(case.y_train), "rounds": rounds, "cached_reps": cached_reps}


# ---- text linear probe -------------------------------------------------------------------------

def text_lp(args: argparse.Namespace) -> Case:
    from transformers import DataCollatorWithPadding

    from peftlab.backbones.loaders import load_classifier, load_tokenizer
    from peftlab.methods.linear_probe import LinearProbe, LinearProbeParams
    from peftlab.estimate.params import arch_spec
    from peftlab.runners.batching import Features, encode
    from peftlab.runners.cached import head_inputs
    from peftlab.tasks import load_task

    n_train, n_eval = (200, 50) if args.quick else (args.n_train, 200)
    if MNLI.is_dir():
        task = {"source": "jsonl", "name": "mnli", "train_file": str(MNLI / "train.jsonl.gz"),
                "eval_file": str(MNLI / "validation_matched.jsonl"), "text_column": "premise",
                "text_pair_column": "hypothesis", "label_names": ["entailment", "neutral", "contradiction"],
                "n_train": n_train, "n_eval": n_eval}
        what = f"MiniLM-L6 linear probe, MultiNLI ({n_train} train pairs)"
    else:
        task = {"source": "builtin", "name": "drugreview", "n_train": min(n_train, 600), "n_eval": n_eval}
        what = f"MiniLM-L6 linear probe, drug reviews ({min(n_train, 600)} train; ../shared/data/mnli absent)"
    cfg = validate_raw({"name": "bench_cached", "backbone": "minilm-l6", "task": task,
                        "methods": [{"method": "linear_probe"}], "output_dir": str(WORK / "text")})
    data = load_task(cfg.task, 0)
    tok = load_tokenizer(cfg.backbone)
    model = load_classifier(cfg.backbone, data.label_names, tok)
    model = LinearProbe().prepare(model, LinearProbeParams(), arch_spec(model.config))
    head = model.classifier
    collate = DataCollatorWithPadding(tok)
    tr, ev = encode(tok, data.train, 128), encode(tok, data.eval, 128)
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    x_tr, x_ev = (head_inputs(model, head, f, collate, 64, cpu, False) for f in (tr, ev))
    feature_s = time.perf_counter() - t0
    both = Features(tr.items + ev.items)

    def recompute(idx: torch.Tensor) -> torch.Tensor:  # raw examples (their indices) -> logits
        items = Features([both[int(i)] for i in idx])
        return head(head_inputs(model, head, items, collate, len(items), cpu, False))

    n = len(tr)
    tcfg = TrainConfig(epochs=1, batch_size=32, eval_batch_size=64, seed=0)
    return Case("text_lp", what, head, Way(head, x_tr, x_ev),
                Way(recompute, torch.arange(n), torch.arange(n, n + len(ev))), feature_s,
                data.train.labels, data.eval.labels, 1e-2, tcfg)


# ---- image methods -----------------------------------------------------------------------------

def image_context(backbone: str, task: dict[str, Any], method: dict[str, Any], batch_size: int) -> Any:
    from peftlab.runners.image_experiment import build_context

    cfg = validate_raw({"name": "bench_cached", "backbone": backbone, "task": task, "methods": [method],
                        "train": {"epochs": 1, "batch_size": batch_size, "seed": 0},
                        "output_dir": str(WORK / "image")})
    return build_context(cfg, None), cfg


def image_lp(args: argparse.Namespace) -> Case:
    from peftlab.images.backbones import logits_of
    from peftlab.images.method_base import image_method

    k = 8 if args.quick else 40
    ctx, cfg = image_context("efficientnet-lite0", {"source": "fashion_mnist", "k_shot": k, "n_eval": 200,
                                                     "image_size": 96}, {"method": "linear_probe"}, 16)
    built = image_method("linear_probe", "classifier").build(ctx, cfg.methods[0])
    model, head = built.model, built.trainable

    def frozen_backbone_mode() -> None:
        model.eval()
        head.train()

    recompute = Way(lambda x: logits_of(model(pixel_values=x)), ctx.x_train, ctx.x_eval, frozen_backbone_mode)
    return Case("image_lp", f"EfficientNet-Lite0 linear probe, Fashion-MNIST 96 px ({len(ctx.x_train)} train)",
                head, Way(built.forward, built.x_train, built.x_eval), recompute, built.feature_s,
                ctx.data.train.labels, ctx.data.eval.labels, 1e-2, cfg.train)


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def random_clip_b32() -> Path:
    """A transformers CLIP folder with ViT-B/32's dimensions and random weights (built once).

    The tokenizer is word-level over the class names and prompt words (CLIP's BPE files do not
    ship offline); CoOp's prompts are [BOS] + context + class name + . + [EOS] either way.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    path = WORK / "clip-vit-b32-random"
    if (path / "model.safetensors").is_file():
        return path
    words = sorted({w for c in FASHION for w in c.lower().replace("/", " / ").replace("-", " - ").split()}
                   | {"a", "photo", "of", "the", "."})
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<start>", "<end>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<start> $A <end>",
                                                       special_tokens=[("<start>", 2), ("<end>", 3)])
    torch.manual_seed(0)
    text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).save_pretrained(str(path))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<start>", eos_token="<end>")
    fast.model_input_names = ["input_ids", "attention_mask"]
    fast.save_pretrained(str(path))
    pre = {"do_resize": True, "size": {"shortest_edge": 224}, "do_center_crop": True,
           "crop_size": {"height": 224, "width": 224}, "image_mean": [0.4815, 0.4578, 0.4082],
           "image_std": [0.2686, 0.2613, 0.2758]}
    (path / "preprocessor_config.json").write_text(json.dumps(pre))
    return path


def coop(args: argparse.Namespace, method: dict[str, Any] | None = None) -> Case:
    from peftlab.images.method_base import image_method

    # CoOp's paper default: 16 random context vectors (peftlab's default initialises from "a photo of a")
    method = method or {"method": "coop", "n_ctx": 16, "ctx_init": None}
    k = 2 if args.quick else 16
    ctx, cfg = image_context(str(random_clip_b32()), {"source": "fashion_mnist", "k_shot": k, "n_eval": 100},
                             method, 32)
    built = image_method("coop", "clip").build(ctx, cfg.methods[0])
    learner, clip = built.trainable, ctx.backbone
    recompute = Way(lambda px: learner(clip.encode_image(px)), ctx.x_train, ctx.x_eval)
    init = f"'{method['ctx_init']}' ({learner.n_ctx} vectors)" if method.get("ctx_init") else f"{learner.n_ctx} random vectors"
    return Case("coop_short" if method.get("ctx_init") else "coop", f"CoOp, context {init}, CLIP ViT-B/32 dims random, Fashion-MNIST 224 px "
                f"({len(ctx.x_train)} train)", learner, Way(built.forward, built.x_train, built.x_eval), recompute,
                built.feature_s, ctx.data.train.labels, ctx.data.eval.labels, 2e-3, cfg.train)


def coop_short(args: argparse.Namespace) -> Case:
    """configs/clip_food101.yaml's CoOp: 4 context vectors initialised from "a photo of a"."""
    return coop(args, {"method": "coop", "n_ctx": 4, "ctx_init": "a photo of a"})


CASES: dict[str, Callable[[argparse.Namespace], Case]] = {"text_lp": text_lp, "image_lp": image_lp, "coop": coop,
                                                          "coop_short": coop_short}


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| case | recompute train s/epoch | cached train s/epoch | speed-up, epochs after the first "
           "| same, with each epoch's evaluation | one-time feature pass s | speed-up, first epoch with evaluation "
           "| accuracy recompute / cached | same predictions |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['what']} | {r['recompute_epoch_s']:.2f} | {r['cached_epoch_s']:.3f} "
                   f"| **{r['speedup_later']:.1f}x** | {r['speedup_later_with_eval']:.1f}x | {r['feature_pass_s']:.1f} "
                   f"| {r['speedup_first']:.2f}x | {r['acc_recompute']:.3f} / "
                   f"{r['acc_cached']:.3f} | {100 * r['agreement']:.1f}% (max logit diff {r['max_logit_diff']:.1e}) |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", choices=sorted(CASES), default=list(CASES))
    ap.add_argument("--rounds", type=int, default=2, help="recomputing epochs (each followed by cached ones)")
    ap.add_argument("--cached-reps", type=int, default=5)
    ap.add_argument("--n-train", type=int, default=1000, help="text: MultiNLI training pairs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: small subsets, one round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else args.rounds
    rows = []
    for name in args.only:
        case = CASES[name](args)
        rows.append(measure(case, rounds, args.cached_reps))
        print(json.dumps(rows[-1]), flush=True)
    body = "\n".join([
        SECTION, "",
        "One epoch of the same head training (peftlab's `fit_tensors`: same initial head, seed, batch order and "
        "hyperparameters) on inputs cached once from the frozen backbone, vs recomputing the frozen backbone for "
        "every batch (eval mode, no gradients). The headline counts train seconds only; the next column adds each "
        "epoch's evaluation (which recomputes the backbone over the eval split too). The first epoch of the cached "
        "path also pays the one-time feature pass over both splits. "
        "Target: >= 20x for epochs after the first.",
        f"Command: `{benchkit.command('cached_features.py')}`; hardware: {benchkit.hardware(args.threads)}; "
        f"{rounds} round(s) of one recomputing epoch then {args.cached_reps} cached epochs, medians; "
        "machine shared with other jobs.",
        "", *table(rows), "",
        "CoOp: peftlab caches the CLIP image tower's embeddings (`ImageContext.features`, also on disk), but the "
        "learned context vectors pass through the text tower, so its forward and backward run every step on both "
        "paths; only the image tower is saved. Both paths run the text tower on one packed sequence: the shared "
        "[BOS] + context positions once per step instead of once per class, then each class's own tokens up to its "
        "EOS, without padding, under a mask that keeps each prompt to the prefix and itself "
        "(`peftlab/images/clip_prefix.py`: CLIP's text transformer is causal, so the prefix positions are the same "
        "in every class's prompt; features and gradients equal the plain padded batch within 1e-5, "
        "tests/test_clip_prefix.py). Per step the text tower then encodes (1 + context) + classes x (name + . + "
        "EOS) tokens whatever the batch size (52 instead of 240 with 16 vectors here), so the ratio is about "
        "1 + (image tower over the batch) / (text tower forward and backward over those tokens): smaller with many "
        "classes or long class names, larger with large batches. Before the shared prefix this table read "
        "8.8x with 16 context vectors and 18.7x with 4. "
        "The CLIP here has ViT-B/32's dimensions with random weights (no CLIP weights ship offline; times do not "
        "depend on weight values, accuracies do and mean nothing there). Predictions of the two paths agree "
        "(up to float rounding from different padding per batch), so caching changes cost, not results. "
        "The one-time feature pass is one measurement, taken first (cold: the first calls into the backbone) and "
        "not interleaved, so the first-epoch column is rough; the pass does the same backbone work as one "
        "recomputing epoch plus its evaluation.",
    ])
    if set(args.only) == set(CASES):
        benchkit.write_section(SECTION, body)
    else:
        print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
