"""How many torch threads a run uses, and whether the machine was already busy when it started.

Two runs at once with torch's default thread count oversubscribe the cores: on 2 cores, full
fine-tuning fell from ~10 to ~2 examples/s. So the count follows what this process may really
use: ``train.num_threads`` if the config sets it, else ``OMP_NUM_THREADS`` if the user set it,
else the cores this process may run on (its CPU affinity, not the machine's count) divided among
the workers started together (``--parallel N``, or the processes ``accelerate launch`` put on
this machine). A busy machine is reported, never silently worked around: the user's request stands.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: the 1-minute load average when this process set its threads (None before, or where unknown)
_load_at_start: float | None = None


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def decide_threads(configured: int | None, omp_env: str | None, cores: int, workers: int = 1) -> tuple[int, str]:
    """The intra-op thread count and why (pure: the caller supplies the environment).

    ``configured``: ``train.num_threads``; ``omp_env``: the raw ``OMP_NUM_THREADS`` value or None;
    ``cores``: cores available to this process; ``workers``: processes sharing those cores.
    An unusable ``OMP_NUM_THREADS`` (empty, 0, not a number, "4,2" nesting lists) is ignored.
    """
    if configured:
        return configured, "train.num_threads"
    if omp_env is not None:
        head = omp_env.split(",")[0].strip()
        if head.isdigit() and int(head) > 0:
            return int(head), "OMP_NUM_THREADS"
    return max(1, cores // max(1, workers)), f"{cores} cores / {max(1, workers)} worker(s)"


def is_contended(load_1min: float | None, cores: int) -> bool:
    """True when other jobs already kept more than every core busy over the last minute."""
    return load_1min is not None and load_1min > cores


def contention_warning(load_1min: float, cores: int) -> str:
    return (f"warning: the machine is busy (1-minute load {load_1min:.1f} > {cores} cores): "
            "timings will be slowed by other jobs")


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def local_workers() -> int:
    """Processes started together on this machine by ``accelerate launch``/torchrun (1 otherwise)."""
    raw = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def apply_threads(configured: int | None, workers: int | None = None) -> int:
    """Set torch's intra-op threads and record the load average (see ``warn_if_busy``)."""
    import torch

    global _load_at_start
    n, _ = decide_threads(configured, os.environ.get("OMP_NUM_THREADS"), available_cores(),
                          workers if workers is not None else local_workers())
    torch.set_num_threads(n)
    _load_at_start = load_average()
    return n


def warn_if_busy() -> None:
    """One warning line when the load recorded at start exceeded the cores. Called once the run
    is under way (after the checks of the input), so a refused input still gets its one line."""
    cores = available_cores()
    if is_contended(_load_at_start, cores):
        assert _load_at_start is not None
        print(contention_warning(_load_at_start, cores), file=sys.stderr, flush=True)


def load_at_start() -> float | None:
    """The load average recorded by the last ``apply_threads`` (stored in every RunResult)."""
    return _load_at_start


def contended_lines(results: list[Any]) -> list[str]:
    """Comparison lines naming the rows whose timings ran on a busy machine (pure, on RunResults).

    A row is contended when its recorded start load exceeds the cores recorded in its environment.
    """
    busy = [f"{r.name} (load {r.load_avg_start:.1f} on {r.environment['cores']} cores)" for r in results
            if r.environment.get("cores") and is_contended(r.load_avg_start, int(r.environment["cores"]))]
    if not busy:
        return []
    return [f"Timings taken while other jobs kept the machine busy, slower than the method alone: {', '.join(busy)}.", ""]
