"""Hardware utilisation: useful training FLOP/s over the machine's measured fp32 GEMM peak.

Usage: python bench/utilisation.py [--threads 2] [--tokens 1536] [--quick]
prints the measured GEMM peak for matrix shapes like MiniLM-L6's (hidden 384, FFN 1536, one
batch of ~1536 tokens) plus a 1024^3 square. bench/train_throughput.py imports it, measures
the peak before, between and after its timed rounds, and divides each side's useful FLOP/s
(peftlab.estimate.flops: non-padding tokens, frozen layers counted right) by it. ``--quick``: fewer
repeats (a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's peftlab
from peftlab.estimate.flops import gemm_flops  # noqa: E402


def shapes(tokens: int, hidden: int = 384, ffn: int = 1536) -> list[tuple[int, int, int]]:
    """(m, k, n) of the model's own products (q/k/v/o, FFN up, FFN down) and a square."""
    return [(tokens, hidden, hidden), (tokens, hidden, ffn), (tokens, ffn, hidden), (1024, 1024, 1024)]


def gemm_rate(m: int, k: int, n: int, seconds: float = 0.3, device: str = "cpu",
              dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of ``torch.matmul`` (fp32 unless ``dtype``) on an (m x k) @ (k x n) product on
    ``device`` over a few repeats (CUDA: timed to the end of the queued work)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up (allocation, kernel choice)
    sync()
    best, flops = 0.0, gemm_flops(m, k, n)
    for _ in range(3):
        reps, t0 = 0, time.perf_counter()
        while (dt := time.perf_counter() - t0) < seconds / 3:
            torch.matmul(a, b, out=out)
            reps += 1
            if reps % 8 == 0:
                sync()
        sync()
        best = max(best, reps * flops / (time.perf_counter() - t0))
    return best


def gemm_peak(tokens: int, seconds: float = 0.3, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """FLOP/s per shape and the peak (the best of them), on torch's current thread count."""
    rates = {f"{m}x{k}x{n}": gemm_rate(m, k, n, seconds, dtype=dtype) for m, k, n in shapes(tokens)}
    return {**rates, "peak": max(rates.values())}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1536)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for k, v in gemm_peak(args.tokens, 0.1 if args.quick else 0.5).items():
        print(f"{k}: {v / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
