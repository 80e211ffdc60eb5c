"""Inference latency: the base model, LoRA merged into it, and LoRA unmerged (peft's wrappers).

Usage: python bench/inference_latency.py [--rounds 200] [--threads 1] [--r 8] [--quick]

MiniLM-L6 (``minilm-l6``) sequence classification on real drug reviews (the packaged builtin
task), batch 1 and batch 32, dynamic padding, max_length 128, ``torch.inference_mode``. LoRA is
peftlab's ``lora`` method (rank ``--r`` on query/value, plus the head) with its B matrices set to
random values, as after training (B = 0 would make the adapter a no-op). ``merged`` is what
``peftlab predict`` serves: :func:`peftlab.runners.predict.merge_for_inference` of that model.
The three run in interleaved rounds (one call each, rotating order) and each reports its median,
so load from other jobs on a shared machine hits all three alike. Tokenisation is excluded: the
same token tensors go to every model. Replaces the "Inference latency" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy

import benchkit
import torch

from peftlab.backbones.loaders import load_classifier, load_tokenizer
from peftlab.config import BackboneConfig
from peftlab.methods.lora import Lora, LoraParams
from peftlab.estimate.params import arch_spec
from peftlab.runners.predict import merge_for_inference
from peftlab.tasks.builtin import BUILTIN_TASKS

SECTION = "## Inference latency (LoRA merged, unmerged, base model)"
LABELS = ["negative", "neutral", "positive"]


def models(r: int, backbone: str = "minilm-l6") -> dict[str, torch.nn.Module]:
    """base, merged and unmerged LoRA (B random) of ``backbone`` (an alias or a model folder), fp32 on CPU."""
    bb = BackboneConfig(name=backbone)
    tok = load_tokenizer(bb)
    base = load_classifier(bb, LABELS, tok).eval()
    torch.manual_seed(0)
    lora = Lora().prepare(copy.deepcopy(base), LoraParams(r=r, dropout=0.0), arch_spec(base.config))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    lora.eval()
    merged = merge_for_inference(copy.deepcopy(lora)).eval()
    return {"base": base, "merged": merged, "unmerged": lora}


def batches(sizes: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    train, _eval, _names = BUILTIN_TASKS.get("drugreview")()
    texts = list(train["text"])
    tok = load_tokenizer(BackboneConfig(name="minilm-l6"))
    out = {}
    for n in sizes:
        out[n] = dict(tok(texts[:n], padding=True, truncation=True, max_length=128, return_tensors="pt"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200, help="calls per model at batch 1 (batch 32: a fifth)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 rounds")
    args = ap.parse_args()
    rounds = 20 if args.quick else args.rounds
    torch.set_num_threads(args.threads)
    ms = models(args.r)
    rows = []
    with torch.inference_mode():
        for bs, batch in batches([1, 32]).items():
            logits = {k: m(**batch).logits for k, m in ms.items()}
            diff = float((logits["merged"] - logits["unmerged"]).abs().max())
            moved = float((logits["merged"] - logits["base"]).abs().max())
            fns = {k: (lambda m=m: m(**batch)) for k, m in ms.items()}
            n = rounds if bs == 1 else max(5, rounds // 5)
            got = benchkit.interleaved(fns, n)
            for clock in ("cpu", "wall"):
                t = {k: benchkit.median(v[clock]) * 1e3 for k, v in got.items()}
                rows.append(f"| {bs} | {clock} | {batch['input_ids'].shape[1]} | {n} | {t['base']:.2f} | {t['merged']:.2f} | "
                            f"{t['unmerged']:.2f} | **{100 * (t['merged'] / t['base'] - 1):+.1f}%** | "
                            f"{t['unmerged'] / t['merged']:.2f}x | {diff:.1e} | {moved:.1e} |")
    body = "\n".join([
        SECTION, "",
        f"MiniLM-L6 (`minilm-l6`, fp32) sequence classification on drug reviews (the first 1 / 32 training "
        f"reviews, dynamic padding to the longest, max_length 128); LoRA r={args.r} on query/value plus the "
        "head, B random (as after training). `merged` = `peftlab.runners.predict.merge_for_inference` (what "
        "`peftlab predict` now serves); `unmerged` = the peft-wrapped model. Median ms per forward over "
        "interleaved rounds (base, merged, unmerged in rotating order), tokenisation excluded; `cpu` = CPU "
        "seconds of the process per call (with one torch thread the measure of work on a shared machine), "
        "`wall` = elapsed. "
        "Target: merged within 3% of base.",
        f"Command: `{benchkit.command('inference_latency.py')}`; hardware: {benchkit.hardware(args.threads)}; "
        "machine shared with other jobs, so absolute ms are pessimistic; the ratios come from interleaved rounds.",
        "",
        "| batch | clock | tokens | rounds | base ms | merged ms | unmerged ms | merged vs base | unmerged / merged "
        "| max abs logit diff merged-unmerged | max abs logit diff merged-base |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "A merged model has the base model's architecture and shapes, so any gap between `base` and "
        "`merged` is timing noise; the last column shows the merged weights do differ from the base's.",
    ])
    benchkit.write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
