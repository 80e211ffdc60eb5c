"""Data parallelism under ``accelerate launch``: who writes, when everyone waits, global sums.

Every process runs the whole experiment (same data, same order, same methods, same decisions),
trains on its shard of each global batch, and evaluates the whole eval set. Only the main process
(rank 0) writes anything: results, adapters, checkpoints, comparisons, reports and progress
output. Decisions that read the output folder (resume or start over, which method is finished,
which checkpoint to continue from) are made by every process *before* rank 0 changes the folder,
with a barrier after, so no process ever sees a half-changed folder.

Without a launcher (``WORLD_SIZE`` unset or 1) everything here is a no-op and rank 0 is this
process; nothing initialises torch.distributed then.
"""

from __future__ import annotations

import os
from typing import Any

def world_size() -> int:
    """Processes in the job, from the launcher's environment (torchrun/accelerate set WORLD_SIZE)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def rank() -> int:
    raw = os.environ.get("RANK", "0")
    return int(raw) if raw.isdigit() else 0


def is_main() -> bool:
    """Whether this process writes outputs (always true without a launcher)."""
    return rank() == 0


def start(cpu: bool) -> None:
    """Join the launcher's process group before the first barrier (no-op in a single process).

    accelerate keeps one state per process, fixed by whoever creates it first: created without
    ``cpu=True`` on a machine without CUDA it reports a single process even under torchrun, so
    this runs with the config's device choice before anything else asks.
    """
    if world_size() > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=cpu or not torch.cuda.is_available())


def barrier() -> None:
    """Wait until every process reaches this point (no-op in a single process)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def global_sums(acc: Any, *values: float) -> list[float]:
    """Sum per-process numbers (examples seen, loss sums) over all processes of ``acc``."""
    if acc.num_processes == 1:
        return list(values)
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=acc.device)
    return [float(v) for v in acc.reduce(t, reduction="sum").cpu()]


def all_finite(acc: Any, loss: Any) -> bool:
    """Whether the loss is finite on every process: one process stopping on a NaN alone would
    leave the others waiting in the gradient all-reduce forever."""
    import torch

    finite = bool(torch.isfinite(loss))
    if acc.num_processes == 1:
        return finite
    flag = torch.tensor([1.0 if finite else 0.0], device=acc.device)
    return bool(acc.reduce(flag, reduction="sum").item() == acc.num_processes)


def shard_global_batches(batches: list[list[int]], per_process: int) -> list[list[int]]:
    """Cut each global batch into consecutive pieces of ``per_process`` examples, in order.

    accelerate deals a batch sampler's batches round-robin (batch k to process k % N), so this
    order gives process r the r-th piece of every global batch: a step of N processes sees exactly
    the examples one process sees with the N-times larger batch, and (equal pieces) the mean of
    the per-process mean losses is the global mean loss, so the all-reduced gradient is the same.
    Only a short last global batch gives short or missing pieces: accelerate (``even_batches``)
    then tops every process up to ``per_process`` examples taken from the start of the epoch, as
    torch's DistributedSampler does, so that last step repeats a few examples. accelerate only
    expects the last round to be short, so a short global batch (the length-grouped order puts it
    anywhere) is moved to the end; otherwise it would be dropped or shift every later round.
    """
    full = max(map(len, batches), default=0)
    ordered = [b for b in batches if len(b) == full] + [b for b in batches if len(b) < full]
    return [b[i:i + per_process] for b in ordered for i in range(0, len(b), per_process)]
