"""Data parallelism for the in-memory training loop (``runners.cached.fit_tensors``) under a launcher.

Image methods train on tensors already in memory, without a DataLoader, so accelerate's sharding
does not apply; this module does the same by hand, with the very rule text runs get from
``LengthGroupedBatches`` + accelerate (``runners.distributed.shard_global_batches``):

* ``batch_size`` is per process (as Trainer's ``per_device_train_batch_size``); the epoch's order
  is drawn for global batches of ``batch_size * processes`` and process ``r`` trains on the
  ``r``-th piece of each, so N processes see per step exactly what one process sees with the
  N-times larger batch;
* a short last global batch is evened out as accelerate's ``even_batches`` does: short or missing
  pieces are topped up with examples from the start of the epoch, so every process takes the same
  number of steps with pieces of equal size (that step repeats a few examples);
* gradients are summed over processes and divided by their number: with equal pieces, the mean of
  the per-process mean losses is the global mean, so the step equals the one-process step;
* every process starts from rank 0's weights and keeps rank 0's running statistics (batch norm),
  as torch's DistributedDataParallel does, so all evaluate the same model on the whole eval set.

Without a process group (no launcher, or one process) every function here is a no-op, and the loop
runs exactly the code it ran before.
"""

from __future__ import annotations

import torch
from torch import nn


def group() -> tuple[int, int]:
    """(rank, processes) of the process group the launcher set up; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_positions(n: int, per_process: int, processes: int, rank: int) -> list[list[int]]:
    """Positions (into an epoch's order of ``n`` examples) that process ``rank`` trains on, step by step.

    The order is cut into consecutive pieces of ``per_process``; piece ``k`` goes to process
    ``k % processes``. A last round with a short or missing piece is evened out exactly as
    accelerate's ``BatchSamplerShard(even_batches=True)`` does (tests/test_distributed_images.py
    compares the two): full pieces stay, the short one and the missing ones are filled from the
    epoch's first examples, continuing where the previous filler stopped.
    """
    pieces = [list(range(i, min(i + per_process, n))) for i in range(0, n, per_process)]
    if not pieces:
        return []
    rounds = len(pieces) // processes if len(pieces[-1]) == per_process else (len(pieces) - 1) // processes
    mine = [pieces[k] for k in range(rounds * processes) if k % processes == rank]
    tail = pieces[rounds * processes:]
    if not tail:
        return mine
    first = min(n, processes * per_process)  # accelerate's ``initial_data``: the first round, repeated
    short = len(tail[-1]) < per_process
    if rank < len(tail) and not (short and rank == len(tail) - 1):
        return mine + [tail[rank]]
    if rank < len(tail):  # the short last piece, topped up
        return mine + [tail[rank] + [j % first for j in range(per_process - len(tail[rank]))]]
    start = (per_process - len(tail[-1]) if short else 0) + (rank - len(tail)) * per_process
    return mine + [[j % first for j in range(start, start + per_process)]]


def broadcast_state(module: nn.Module) -> None:
    """Every parameter and buffer from rank 0 (the same start everywhere, as DDP's constructor does)."""
    rank, processes = group()
    if processes > 1:
        import torch.distributed as dist

        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)


def broadcast_running_stats(module: nn.Module) -> None:
    """Rank 0's batch-norm statistics after a step: each process updated them from its own piece."""
    rank, processes = group()
    if processes > 1:
        import torch.distributed as dist

        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
                    for b in m.buffers():
                        dist.broadcast(b.data, src=0)


def mean_gradients(params: list[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes (one all-reduce per dtype and device)."""
    rank, processes = group()
    if processes == 1:
        return
    import torch.distributed as dist

    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= processes
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def finite_everywhere(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (all stop together, no all-reduce left waiting)."""
    finite = bool(torch.isfinite(loss))
    rank, processes = group()
    if processes == 1:
        return finite
    import torch.distributed as dist

    flag = torch.tensor([0.0 if finite else 1.0], device=loss.device)
    dist.all_reduce(flag)
    return bool(flag.item() == 0)


def summed(*values: float, device: torch.device | None = None) -> list[float]:
    """Per-process numbers (examples seen, loss sums) summed over all processes."""
    rank, processes = group()
    if processes == 1:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def gathered_bytes(payload: bytes, device: torch.device | None = None) -> list[bytes] | None:
    """Every process's ``payload``, in rank order, on every process; None without a process group.

    Sizes are exchanged first, so payloads may differ in length (padded for the one all-gather).
    """
    rank, processes = group()
    if processes == 1:
        return None
    import torch.distributed as dist

    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(processes)]
    dist.all_gather(sizes, size)
    padded = torch.zeros(max(int(s) for s in sizes), dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    bufs = [torch.zeros_like(padded) for _ in range(processes)]
    dist.all_gather(bufs, padded)
    return [bytes(b[:int(s)].cpu().numpy().tobytes()) for b, s in zip(bufs, sizes)]
