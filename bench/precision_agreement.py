"""bf16 autocast against fp32 on the same inputs: do the predictions change, and is it faster?

Usage: python bench/precision_agreement.py [--threads 1] [--n-lm 379] [--batch-size 8] [--quick]

Two of peftlab's evaluation paths on the drug-review test reviews (builtin task ``drugreview``,
379 reviews, 3 classes), each run in fp32 and under ``torch.autocast("cpu", torch.bfloat16)``
(what ``train.mixed_precision: auto`` uses where the CPU probe says bf16 is faster; see
peftlab.backbones.precision) with the same weights and inputs:
  * MiniLM-L6 classification (``peftlab.runners.train.predict_logits``, as evaluation and
    ``peftlab predict`` run it). The encoder is the pretrained one; its head is a logistic
    regression fitted on the encoder's fp32 features of the 600 training reviews (seconds, and
    the same model a linear probe trains). A random head would do for a speed figure, but its
    predictions sit near one class and would make agreement look better than it is.
  * SmolLM2-135M zero-shot in-context scoring (``peftlab.icl.scoring.PrefixScorer`` with the
    shipped sentiment template, as the ``icl`` runner scores), on the first ``--n-lm`` reviews.
Reported per model: identical predictions (%), the largest |log-probability difference| (MiniLM:
over every class's log-softmax; SmolLM2: over every verbalizer's summed log-likelihood), the
accuracy of each side, and the speed ratio. The sides alternate batch by batch (A B, then B A),
so load from other jobs lands on both; CPU seconds are compared (one torch thread by default).
Replaces the "Mixed precision on CPU" section of BENCHMARKS.md (not with --quick).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import benchkit
import numpy as np
import torch
from transformers import DataCollatorWithPadding

from peftlab.backbones.loaders import load_classifier, load_tokenizer
from peftlab.config import BackboneConfig, TaskConfig
from peftlab.backbones.causal_lm import load_causal_lm
from peftlab.icl.scoring import PrefixScorer
from peftlab.methods.icl import IclParams
from peftlab.backbones.precision import Precision, cached_probe, probe_reason, shapes_of
from peftlab.runners.batching import encode
from peftlab.runners.cached import head_inputs
from peftlab.runners.icl import label_probs, make_prompting, verbalizer_scores
from peftlab.runners.train import predict_logits
from peftlab.tasks import load_task

SECTION = "## Mixed precision on CPU: bf16 autocast vs fp32 (agreement and speed)"
SIDES = {"fp32": Precision("fp32", "bench"), "bf16": Precision("bf16", "bench")}


def alternate(chunks: list[list[int]], run: Callable[[list[int]], Any]) -> dict[str, dict[str, Any]]:
    """``run(chunk)`` for every chunk on both sides, alternating which goes first; per side the
    outputs (in chunk order) and the CPU and wall seconds."""
    out: dict[str, dict[str, Any]] = {s: {"outputs": [], "cpu": 0.0, "wall": 0.0} for s in SIDES}
    for i, chunk in enumerate(chunks):
        for side in (list(SIDES) if i % 2 == 0 else list(SIDES)[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            with SIDES[side].autocast():
                out[side]["outputs"].append(run(chunk))
            out[side]["cpu"] += time.process_time() - c0
            out[side]["wall"] += time.perf_counter() - t0
    return out


def chunks_of(n: int, size: int) -> list[list[int]]:
    return [list(range(s, min(n, s + size))) for s in range(0, n, size)]


def summary(name: str, logp: dict[str, np.ndarray], labels: np.ndarray, timing: dict[str, dict[str, Any]],
            what: str, probe: str) -> dict[str, Any]:
    """Agreement and speed of the two sides; ``logp[side]``: (n, k) log-probabilities."""
    pred = {s: v.argmax(-1) for s, v in logp.items()}
    return {"model": name, "n": len(labels), "what": what, "probe": probe,
            "identical": float((pred["fp32"] == pred["bf16"]).mean()),
            "max_diff": float(np.abs(logp["fp32"] - logp["bf16"]).max()),
            "acc": {s: float((p == labels).mean()) for s, p in pred.items()},
            "cpu": {s: t["cpu"] for s, t in timing.items()}, "wall": {s: t["wall"] for s, t in timing.items()}}


def probe_line(config: Any, tokens: int) -> str:
    shapes = shapes_of(config, tokens)
    return probe_reason(cached_probe(shapes), shapes, torch.get_num_threads())


def minilm(data: Any, batch_size: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    bb = BackboneConfig(name="minilm-l6")
    tok = load_tokenizer(bb)
    model = load_classifier(bb, data.label_names, tok).eval()
    collate = DataCollatorWithPadding(tok)
    train, ev = encode(tok, data.train, 128), encode(tok, data.eval, 128)
    feats = head_inputs(model, model.classifier, train, collate, 64, torch.device("cpu"), False)
    head = LogisticRegression(max_iter=2000, C=1.0).fit(feats.numpy(), data.train.labels)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(head.coef_).float())
        model.classifier.bias.copy_(torch.from_numpy(head.intercept_).float())
    # warm-up: first passes pay one-off allocations and bf16 weight packing
    for side in SIDES.values():
        with side.autocast():
            predict_logits(model, _take(ev, list(range(batch_size))), collate, batch_size, torch.device("cpu"))
    timing = alternate(chunks_of(len(ev), 4 * batch_size),
                       lambda idx: predict_logits(model, _take(ev, idx), collate, batch_size, torch.device("cpu")))
    logp = {s: torch.log_softmax(torch.from_numpy(np.concatenate(t["outputs"])), -1).numpy() for s, t in timing.items()}
    return summary("MiniLM-L6 (classifier, logistic-regression head)", logp, data.eval.labels, timing,
                   "log-softmax over the 3 classes", probe_line(model.config, batch_size * 128))


def _take(feats: Any, idx: list[int]) -> Any:
    from peftlab.runners.batching import Features

    return Features([feats.items[i] for i in idx])


def smollm2(data: Any, n: int, batch_size: int) -> dict[str, Any]:
    bb = BackboneConfig(name="smollm2-135m")
    tok = load_tokenizer(bb)
    model = load_causal_lm(bb, "none", torch.device("cpu"))
    p = make_prompting(IclParams(chat="off"), tok, data.label_names)
    contexts = [p.context([], t, None) for t in data.eval.texts[:n]]
    scorer = PrefixScorer(model, tok.pad_token_id, batch_size)
    for side in SIDES.values():  # warm-up
        with side.autocast():
            verbalizer_scores(scorer, p, contexts[:batch_size])
    timing = alternate(chunks_of(n, 4 * batch_size), lambda idx: verbalizer_scores(scorer, p, [contexts[i] for i in idx]))
    sums, probs = {}, {}
    for side, t in timing.items():
        sums[side] = np.asarray([row for _, s in t["outputs"] for row in s])
        probs[side] = np.concatenate([label_probs(p, e, s, "sum", 1.0) for e, s in t["outputs"]])
    out = summary("SmolLM2-135M (zero-shot in-context scoring)", {s: np.log(v) for s, v in probs.items()},
                  data.eval.labels[:n], timing, "summed log-likelihood of every verbalizer",
                  probe_line(model.config, batch_size * 128))
    out["max_diff"] = float(np.abs(sums["fp32"] - sums["bf16"]).max())
    return out


def render(rows: list[dict[str, Any]], threads: int) -> str:
    lines = [SECTION, "",
             f"Command: `{benchkit.command('precision_agreement.py')}`; hardware: {benchkit.hardware(threads)}.", "",
             "The same weights and inputs in fp32 and under bf16 autocast (`torch.autocast(\"cpu\", torch.bfloat16)`, "
             "what `train.mixed_precision: auto` uses where the CPU probe finds bf16 matmuls at least 1.3x faster), "
             "drug-review test reviews; the two sides alternate batch by batch. Speed-up = fp32 CPU seconds / "
             "bf16 CPU seconds.", "",
             "| model | reviews | identical predictions | max abs log-prob difference (over) | accuracy fp32 / bf16 | "
             "CPU s fp32 / bf16 | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n']} | {100 * r['identical']:.1f}% | {r['max_diff']:.3f} ({r['what']}) | "
                     f"{r['acc']['fp32']:.3f} / {r['acc']['bf16']:.3f} | {r['cpu']['fp32']:.1f} / {r['cpu']['bf16']:.1f} | "
                     f"{r['cpu']['fp32'] / r['cpu']['bf16']:.2f}x |")
    lines += ["", "The probe's verdict at each model's shapes on this machine (peftlab.backbones.precision, cached): "
              + "; ".join(f"{r['model'].split(' ')[0]}: {r['probe']}" for r in rows) + ".", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-lm", type=int, default=379, help="reviews scored by SmolLM2 (the test split has 379)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 16 reviews, no section written")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_task(TaskConfig(source="builtin", name="drugreview"), 0)
    if args.quick:
        data.eval = data.eval.take(np.arange(16))
    rows = [minilm(data, args.batch_size), smollm2(data, min(args.n_lm, len(data.eval)), args.batch_size)]
    body = render(rows, args.threads)
    if args.quick:
        print(body)
    else:
        benchkit.write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
