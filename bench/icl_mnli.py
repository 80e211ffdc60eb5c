"""In-context classification on a MultiNLI subset: peftlab's scorer against lm-evaluation-harness.

Both score the *same* prompts (instruction + k balanced demonstrations + query, rendered by
peftlab's NLI template) with the *same* SmolLM2-135M model object, tokenizer and threads:
peftlab through its shared-prefix KV-cache scorer, lm-eval through ``HFLM.loglikelihood`` (its
batched scorer, with its own context grouping). Reported: accuracy of each, the share of
examples on which their predictions agree, and the speed ratio (model loading excluded). The two
sides run interleaved (A B A B ..., ``--rounds`` times) and the median CPU time of each is kept,
so the ratio survives a machine shared with other jobs.

Also reported, to show how close the scorer is to the hardware: the tokens each k needs at the
least (every query's own tokens, the shared prefix once), and the time those need at the GEMM
throughput this machine measures at the model's own layer shapes (the floor of any exact scorer).

Usage (CLI kept stable for bench/run_all):
    python bench/icl_mnli.py [--n-eval 50] [--shots 0,4] [--batch-size 8] [--threads 1] [--rounds 3]
Run it from the repository root with this checkout's peftlab importable (``pip install -e .``,
or ``PYTHONPATH=.``: Python puts bench/, not the current folder, first on the path).
Replaces the "In-context classification" section of BENCHMARKS.md. Skips (exit 0) when
../shared/data/mnli is absent or lm-eval is not installed (pip install "peftlab[bench]").
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from peftlab.backbones.loaders import load_tokenizer
from peftlab.config import BackboneConfig, validate_raw
from peftlab.icl.demos import balanced_indices
from peftlab.backbones.causal_lm import load_causal_lm
from peftlab.icl.scoring import PrefixScorer, common_prefix_len
from peftlab.methods.icl import IclParams
from peftlab.report.sections import write_section
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


def gemm_flops_per_s(model, rows: int = 512) -> float:
    """Measured fp32 FLOP/s of ``linear`` at the model's MLP shapes on the current threads."""
    h, f = model.config.hidden_size, model.config.intermediate_size
    x, w = torch.randn(rows, h), torch.randn(f, h)
    torch.nn.functional.linear(x, w)
    reps, t = 20, time.process_time()
    for _ in range(reps):
        torch.nn.functional.linear(x, w)
    return 2 * rows * h * f * reps / (time.process_time() - t)


def floor_seconds(model, tok, contexts: list[str], flops: float) -> tuple[int, float]:
    """(tokens an exact scorer must run, their time at ``flops``): 2 FLOPs per non-embedding
    weight per token (attention scores and the one scored position's head are left out)."""
    ids = [tok(c).input_ids for c in contexts]
    tokens = sum(len(i) for i in ids) - (len(ids) - 1) * common_prefix_len(ids)
    emb = model.get_input_embeddings().weight.numel()
    weights = sum(p.numel() for p in model.parameters()) - emb
    return tokens, 2 * weights * tokens / flops


def compare(model, tok, data, shots: int, batch_size: int, rounds: int, flops: float) -> dict:
    """Both scorers on the same k-shot prompts, interleaved ``rounds`` times; predictions,
    accuracies and median times."""
    params = IclParams(shots=shots, template="nli", chat="off", max_demo_chars=None)
    p = make_prompting(params, tok, data.label_names)
    demos = [p.demo(data.train, j) for j in balanced_indices(data.train.labels, shots, 0)] if shots else []
    contexts = [p.context(demos, t, h) for t, h in zip(data.eval.texts, data.eval.pairs or [])]
    answers = [ws[0] for ws in p.answers]
    with torch.no_grad():  # warm-up: the first forward of a process pays one-off allocations
        model(input_ids=torch.tensor([tok(contexts[0]).input_ids]))
    t_ours, t_theirs = [], []
    for _ in range(rounds):
        ours, a = timed(lambda: score_probs(
            PrefixScorer(model, tok.pad_token_id, batch_size), p, contexts, "sum", 1.0).argmax(1))
        theirs, b = timed(lambda: lm_eval_predictions(model, tok, contexts, answers, batch_size))
        t_ours.append(a)
        t_theirs.append(b)
    (w_ours, t_ours), (w_theirs, t_theirs) = _median(t_ours), _median(t_theirs)
    tokens, floor = floor_seconds(model, tok, contexts, flops)
    y = data.eval.labels
    return {"shots": shots, "acc_ours": float((ours == y).mean()), "acc_theirs": float((theirs == y).mean()),
            "agree": float((ours == theirs).mean()), "n_agree": int((ours == theirs).sum()), "n": len(y),
            "cpu_ours": t_ours, "cpu_theirs": t_theirs, "wall_ours": w_ours, "wall_theirs": w_theirs,
            "tokens": tokens, "floor": floor}


def _median(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in times), statistics.median(c for _, c in times)


def ceilings(rows: list[dict]) -> str:
    """The largest speed-up an exact scorer could show per k: lm-eval's time over the floor."""
    return "; ".join(f"at {r['shots']} shots lm-eval takes {r['cpu_theirs'] / r['floor']:.1f}x the floor, the "
                     f"ceiling of any exact scorer's ratio" for r in rows)


def table(rows: list[dict]) -> str:
    head = ("| shots | accuracy peftlab | accuracy lm-eval | agreement | CPU s peftlab | CPU s lm-eval | "
            "speed-up (CPU) | wall s peftlab | wall s lm-eval | tokens needed | GEMM floor s | floor / peftlab |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['shots']} | {r['acc_ours']:.4f} | {r['acc_theirs']:.4f} | {r['agree']:.1%} ({r['n_agree']}/{r['n']}) | "
        f"{r['cpu_ours']:.1f} | {r['cpu_theirs']:.1f} | **{r['cpu_theirs'] / r['cpu_ours']:.1f}x** | "
        f"{r['wall_ours']:.1f} | {r['wall_theirs']:.1f} | {r['tokens']} | {r['floor']:.1f} | "
        f"{r['floor'] / r['cpu_ours']:.0%} |\n" for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-eval", type=int, default=50)
    ap.add_argument("--n-train", type=int, default=300, help="pool the demonstrations are drawn from")
    ap.add_argument("--shots", default="0,4", help="comma-separated k values")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 makes CPU time a fair measure on a shared machine")
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skip: {DATA} not found (benchmark data is optional)")
        return 0
    try:
        import lm_eval
    except ImportError:
        print("skip: lm-eval is not installed (pip install 'peftlab[bench]')")
        return 0
    torch.set_num_threads(args.threads)
    cfg = validate_raw({"backbone": args.backbone, "task": task(args.n_train, args.n_eval), "methods": ["icl"]})
    data = load_task(cfg.task, 0)
    bb = BackboneConfig(name=args.backbone)
    tok = load_tokenizer(bb)
    model = load_causal_lm(bb, "none", torch.device("cpu"))
    flops = gemm_flops_per_s(model)
    rows = [compare(model, tok, data, int(k), args.batch_size, args.rounds, flops) for k in args.shots.split(",")]
    cmd = "python bench/icl_mnli.py " + " ".join(sys.argv[1:])
    body = (
        f"{SECTION}\n\n"
        f"SmolLM2-135M-Instruct ({args.backbone}, fp32) on MultiNLI: {args.n_eval} pairs from validation_matched "
        f"(stratified, seed 0); k class-balanced demonstrations from {args.n_train} training pairs; template "
        f"`nli` (verbalizers yes / maybe / no), plain prompts, summed log-likelihood. peftlab's scorer (shared-prefix "
        f"KV cache) against lm-eval {lm_eval.__version__} `HFLM.loglikelihood` on the same prompts, model object "
        f"and batch size ({args.batch_size}); model loading excluded.\n"
        f"Command: `{cmd.strip()}`; hardware: CPU ({platform.machine()}), {torch.get_num_threads()} torch thread(s), "
        f"shared with other jobs: CPU seconds of the process are the measure of work (wall seconds shown too); "
        f"both sides interleaved {args.rounds} times, medians shown.\n\n"
        f"{table(rows)}\n"
        f"Tokens needed: every query's own tokens plus the shared prefix (instruction, demonstrations) once. "
        f"GEMM floor: those tokens at 2 FLOPs per non-embedding weight, at the fp32 `linear` throughput "
        f"measured here at the model's MLP shape ({flops / 1e9:.0f} GFLOP/s on {torch.get_num_threads()} thread(s)): "
        f"no exact scorer can beat it on this machine. lm-eval runs the shared prefix again for every query "
        f"and the output head (49k x 576) over every position; {ceilings(rows)}. With no demonstrations the "
        f"shared prefix is only the instruction, so even a scorer at the floor could not reach 3x at 0 shots "
        f"here; with demonstrations the prefix dominates and the ratio grows with k.\n\n"
    )
    write_section(ROOT / "BENCHMARKS.md", SECTION, body)
    print(body)
    return 0 if all(r["agree"] >= 0.99 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
