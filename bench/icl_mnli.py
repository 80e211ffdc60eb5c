"""In-context classification on a MultiNLI subset: peftlab's scorer against lm-evaluation-harness.

Both score the *same* prompts (instruction + k balanced demonstrations + query, rendered by
peftlab's NLI template) with the *same* SmolLM2-135M model object, tokenizer and threads:
peftlab through its shared-prefix KV-cache scorer, lm-eval through ``HFLM.loglikelihood`` (its
batched scorer, with its own context grouping). Reported: accuracy of each, the share of
examples on which their predictions agree, and the speed ratio (model loading excluded).

Usage: python bench/icl_mnli.py [--n-eval 50] [--shots 2] [--batch-size 8]
Replaces the "In-context classification" section of BENCHMARKS.md. Skips (exit 0) when
../shared/data/mnli is absent or lm-eval is not installed (pip install "peftlab[bench]").
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from peftlab.backbones import load_tokenizer
from peftlab.config import BackboneConfig, validate_raw
from peftlab.icl.demos import balanced_indices
from peftlab.icl.lm import load_causal_lm
from peftlab.icl.scoring import PrefixScorer
from peftlab.methods.icl import IclParams
from peftlab.report.sections import replace_section
from peftlab.runners.icl import make_prompting, score_probs
from peftlab.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mnli"
SECTION = "## In-context classification"
LABELS = ["entailment", "neutral", "contradiction"]


def task(n_train: int, n_eval: int) -> dict:
    return {"source": "jsonl", "name": "mnli", "train_file": str(DATA / "train.jsonl.gz"),
            "eval_file": str(DATA / "validation_matched.jsonl"), "text_column": "premise",
            "text_pair_column": "hypothesis", "label_column": "label", "label_names": LABELS,
            "n_train": n_train, "n_eval": n_eval}


def lm_eval_predictions(model, tokenizer, contexts: list[str], answers: list[str], batch_size: int) -> np.ndarray:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    reqs = [Instance("loglikelihood", doc={}, arguments=(ctx, a), idx=j, metadata=("mnli", i, 1))
            for i, ctx in enumerate(contexts) for j, a in enumerate(answers)]
    lls = np.array([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]).reshape(len(contexts), len(answers))
    return lls.argmax(1)


def timed(fn):
    """(result, (wall seconds, CPU seconds of this process)). On a machine shared with other
    jobs the CPU time is the fairer measure of the work done; both are reported."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - w0, time.process_time() - c0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-eval", type=int, default=50)
    ap.add_argument("--n-train", type=int, default=300, help="pool the demonstrations are drawn from")
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--backbone", default="smollm2-135m")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skip: {DATA} not found (benchmark data is optional)")
        return 0
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("skip: lm-eval is not installed (pip install 'peftlab[bench]')")
        return 0
    cfg = validate_raw({"backbone": args.backbone, "task": task(args.n_train, args.n_eval), "methods": ["icl"]})
    data = load_task(cfg.task, 0)
    bb = BackboneConfig(name=args.backbone)
    tok = load_tokenizer(bb)
    model = load_causal_lm(bb, "none", torch.device("cpu"))
    params = IclParams(shots=args.shots, template="nli", chat="off", max_demo_chars=None)
    p = make_prompting(params, tok, data.label_names)
    demos = [p.demo(data.train, j) for j in balanced_indices(data.train.labels, args.shots, 0)]
    contexts = [p.context(demos, t, h) for t, h in zip(data.eval.texts, data.eval.pairs or [])]
    answers = [ws[0] for ws in p.answers]

    with torch.no_grad():  # warm-up: the first forward of a process pays one-off allocations
        model(input_ids=torch.tensor([tok(contexts[0]).input_ids]))
    ours, (w_ours, t_ours) = timed(lambda: score_probs(
        PrefixScorer(model, tok.pad_token_id, args.batch_size), p, contexts, "sum", 1.0).argmax(1))
    theirs, (w_theirs, t_theirs) = timed(lambda: lm_eval_predictions(model, tok, contexts, answers, args.batch_size))

    y = data.eval.labels
    agree = float((ours == theirs).mean())
    cmd = "python bench/icl_mnli.py " + " ".join(sys.argv[1:])
    import lm_eval as le

    body = (
        f"{SECTION}\n\n"
        f"SmolLM2-135M-Instruct ({args.backbone}, fp32) on MultiNLI: {args.n_eval} pairs from validation_matched "
        f"(stratified, seed 0), {args.shots}-shot with class-balanced demonstrations from {args.n_train} training "
        f"pairs, template `nli` (verbalizers yes / maybe / no), plain prompts, summed log-likelihood.\n"
        f"Command: `{cmd.strip()}`; hardware: CPU, {torch.get_num_threads()} threads ({platform.machine()}), "
        f"shared with other jobs, so absolute times are noisy and the ratio is the number to read; "
        f"lm-eval {le.__version__} `HFLM.loglikelihood` on the same prompts, model object and batch size.\n\n"
        f"| scorer | accuracy | CPU s | wall s | examples per CPU s |\n|---|---|---|---|---|\n"
        f"| peftlab (shared-prefix KV cache) | {float((ours == y).mean()):.4f} | {t_ours:.1f} | {w_ours:.1f} | {len(y) / t_ours:.2f} |\n"
        f"| lm-evaluation-harness | {float((theirs == y).mean()):.4f} | {t_theirs:.1f} | {w_theirs:.1f} | {len(y) / t_theirs:.2f} |\n\n"
        f"Predictions agree on {agree:.1%} of examples ({int((ours == theirs).sum())}/{len(y)}); "
        f"peftlab is {t_theirs / t_ours:.1f}x faster in CPU time ({w_theirs / w_ours:.1f}x in wall time).\n\n"
    )
    bench_md = ROOT / "BENCHMARKS.md"
    text = bench_md.read_text(encoding="utf-8") if bench_md.exists() else "# Benchmarks\n\nEvery number below comes from the command printed with it.\n"
    bench_md.write_text(replace_section(text, SECTION, body), encoding="utf-8")
    print(body)
    return 0 if agree >= 0.99 else 1


if __name__ == "__main__":
    raise SystemExit(main())
