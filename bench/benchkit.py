"""What the bench scripts of this folder share: the checkout's own peftlab on sys.path, the
hardware line every section carries, interleaved timing, and writing one section of BENCHMARKS.md.

Timings here are taken on machines that may be shared (the 2-core CPU of the project's own runs
is). Timing A then B lets a burst of someone else's load land on one side only; timing them in
alternating rounds (A B A B ...) and taking each side's median keeps the *ratio* honest.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` must use this checkout, not an installed peftlab
    sys.path.insert(0, str(ROOT))

# CPU sections compare peftlab with fp32 peers and with earlier fp32 sections, so peftlab's
# `auto` precision means fp32 here, whatever the CPU's bf16 probe says; a script that measures
# bf16 (precision_agreement.py, train_throughput.py --precision bf16) sets its own.
os.environ.setdefault("PEFTLAB_CPU_PRECISION", "fp32")

BENCH_MD = ROOT / "BENCHMARKS.md"
SHARED = ROOT.parent / "shared"


def command(script: str) -> str:
    """The command line that produced a section, as a user would type it from the repository root."""
    return " ".join(["python", f"bench/{script}", *sys.argv[1:]])


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(threads: int | None = None) -> str:
    """CPU model, cores, torch threads (and the GPU when one is used): one line for a section."""
    import torch

    cpu = cpu_model()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return (f"{cpu} ({os.cpu_count()} cores, {threads or torch.get_num_threads()} torch thread(s)){gpu}{load}; "
            f"torch {torch.__version__}")


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, dict[str, list[float]]]:
    """Seconds of each call, ``rounds`` times, in alternating order (the order rotates every round).

    Both clocks per call: ``wall`` (perf_counter) and ``cpu`` (this process's CPU time). With one
    torch thread on a shared machine CPU seconds are the measure of work: a call that waits for
    a core accrues wall time but no CPU time.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[n]()
            times[n]["cpu"].append(time.process_time() - c0)
            times[n]["wall"].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_section(heading: str, body: str, path: Path = BENCH_MD) -> None:
    """Replace this script's section of BENCHMARKS.md, or of ``path`` (a smoke run's
    BENCHMARKS.quick.md); ``body`` starts with ``heading``."""
    from peftlab.report.sections import write_section as write

    write(path, heading, body)
    print(body)
