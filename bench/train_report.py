"""The BENCHMARKS.md section of bench/train_throughput.py, from its result dict (pure text)."""

from __future__ import annotations

from typing import Any

SIDE_NAMES = {
    "peftlab": "peftlab (runners/train.py fit)",
    "notebook": "(a) Trainer + peft, padding=max_length 128",
    "tuned": "(b) Trainer + peft, dynamic padding + group_by_length",
}
TARGETS = {"notebook": 3.0, "tuned": 1.3}


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def render_section(r: dict[str, Any], title: str, cmd: str, hw: str) -> str:
    med, full, util = r["median_ex_s"], r["full"], r["utilisation"]
    a = r["args"]
    rows = []
    for side, name in SIDE_NAMES.items():
        ratio = med["peftlab"] / med[side]
        f = full[side]
        rows.append(
            f"| {name} | {med[side]:.1f} | {ratio:.2f}x | {' '.join(f'{x:.1f}' for x in r['rates'][side])} | "
            f"{f['examples'] / f['train_s']:.1f} | {_fmt(f['accuracy'], '.4f')} | "
            f"{r['useful_flops_s'][side] / 1e9:.1f} | {100 * util[side]:.0f}% |"
        )
    verdict = []
    for side, target in TARGETS.items():
        ratio = med["peftlab"] / med[side]
        verdict.append(f"vs {side}: {ratio:.2f}x (target >= {target}x: {'met' if ratio >= target else 'NOT met'})")
    acc_gaps = {s: 100 * (full["peftlab"]["accuracy"] - full[s]["accuracy"]) for s in ("notebook", "tuned")}
    acc_line = "; ".join(f"peftlab - {s}: {g:+.1f} points ({'within' if abs(g) <= 0.5 else 'NOT within'} 0.5)"
                         for s, g in acc_gaps.items())
    peaks = ", ".join(f"{p / 1e9:.0f}" for p in r["gemm_peaks"])
    return (
        f"{title}\n\n"
        f"Command: `{cmd}`; hardware: {hw}. The machine was shared with other jobs (2 cores, several agents),\n"
        f"so absolute rates are depressed; the ratios come from interleaved rounds (each round trains every\n"
        f"side on the same {r['round_examples']} pairs, side order rotated; median of {a['rounds']} rounds).\n"
        f"Same model (minilm-l6), data, one epoch, lr, batch 32, warm-up 6%, weight decay 0.01, seed 0"
        f"{', LoRA r 8, alpha 16, dropout 0.1 on query/key/value/dense' if r['method'] == 'lora' else ''}.\n"
        f"Full runs: {a['n_train']} training pairs, accuracy on {a['n_eval']} validation_matched pairs.\n\n"
        f"| side | median ex/s (rounds) | peftlab speed-up | ex/s per round | ex/s full run | accuracy full run | useful GFLOP/s | of GEMM peak |\n"
        f"|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Speed-up {'; '.join(verdict)}.\nAccuracy: {acc_line}.\n\n"
        f"Utilisation: useful FLOPs (peftlab.flops) of the round's {r['round_tokens']} real tokens = "
        f"{r['round_flops'] / 1e12:.2f} TFLOP per epoch ({r['trainable_linear_params']} trainable linear weights): "
        f"per linear layer 2n forward, 2n input gradient only where something below is trainable, 2n weight\n"
        f"gradient only when trainable; embeddings, attention products, norms and padding not counted. Divided by the\n"
        f"median fp32 GEMM peak (torch.matmul of the model's shapes, {a['threads']} threads) measured before,\n"
        f"between and after the rounds: {peaks} GFLOP/s (median {r['gemm_peak_median'] / 1e9:.0f}).\n\n"
    )
