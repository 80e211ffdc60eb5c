"""Atomic training checkpoints: a checkpoint folder is complete or absent, never half-written.

A resumed run must continue exactly where the killed one stopped, so a checkpoint holds
everything the next step depends on: the trainable tensors, the optimizer moments, the scheduler
counters, every random-number generator (python, numpy, torch, CUDA), where in the data order
training was (epoch and batches done; the order itself is a pure function of seed and epoch),
and the running loss sums and epoch records so far. Tensors go through safetensors and the rest
through JSON: nothing is unpickled when a run resumes.

Layout: ``METHOD_DIR/checkpoints/step-00000042/{trainable,optimizer,rng}.safetensors + state.json``
(plus ``buffers.safetensors`` when the loop asks for buffers: batch-norm statistics move while a
CNN trains, and an exact resume needs them), written into ``.step-00000042.tmp`` and renamed, so
a folder without the ``.tmp`` is complete.

Under a launcher each process draws its own random numbers (dropout masks: on GPUs each process
has its own device generator), so ``rng.safetensors`` is rank 0's and ``rng.rank{R}.safetensors``
holds process R's generators (with their JSON part in the file's metadata). They are gathered to
rank 0, which writes them with the rest (rank 0 stays the only writer); on resume each process
restores its own, or rank 0's when its file is missing (a checkpoint of a run with fewer processes).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import save_safetensors
from peftlab.methods.base import read_safetensors
from peftlab.runners import data_parallel as dp
from peftlab.infra.distributed import rank as launcher_rank

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
BUFFERS_FILE = "buffers.safetensors"
RANK_RNG_FILE = "rng.rank{}.safetensors"
FORMAT = 1


@dataclass
class Progress:
    """Where training stands: what the loop needs besides tensors to go on."""

    epoch: int = 1  # the epoch in progress (1-based)
    batches_done: int = 0  # batches of ``epoch`` already trained (0 = the epoch has not started)
    step: int = 0  # optimizer steps so far, over all epochs
    loss_sum: float = 0.0  # of the epoch in progress
    seen: int = 0  # examples of the epoch in progress
    train_s: float = 0.0
    eval_s: float = 0.0
    train_examples: int = 0
    eval_examples: int = 0
    epochs: list[dict[str, Any]] = field(default_factory=list)  # EpochRecord dumps


@dataclass
class Resumed:
    """A loaded checkpoint, applied to the model at once and to the rest as the loop needs it."""

    progress: Progress
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    path: Path


def checkpoint_root(method_dir: Path) -> Path:
    return method_dir / CHECKPOINTS


def complete_checkpoints(method_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a temp folder left by a kill is not one)."""
    root = checkpoint_root(method_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


# ---- the pieces, each a pure conversion between live objects and (tensors, JSON) -----------------


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [kind, pos, has_gauss, gauss], "python": [py_version, list(py_state), py_gauss]}
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, py_gauss = meta["python"]
    random.setstate((version, tuple(state), py_gauss))


def rng_payload() -> bytes:
    """This process's generators as the bytes of one safetensors file (JSON part in its metadata)."""
    from safetensors.torch import save

    tensors, meta = rng_state()
    return save(tensors, metadata={"rng": json.dumps(meta)})


def rank_rng_states(device: torch.device | None = None) -> dict[int, bytes] | None:
    """Every other process's generators (rank -> rng_payload), gathered for rank 0 to save.

    A collective: every process calls it at each checkpoint. None in a single process.
    """
    payloads = dp.gathered_bytes(rng_payload(), device)
    return None if payloads is None else dict(enumerate(payloads[1:], start=1))


def _rank_rng(path: Path, rank: int) -> dict[str, Any] | None:
    """Process ``rank``'s generators saved in the checkpoint ``path``, if that file is there."""
    from safetensors import safe_open

    file = path / RANK_RNG_FILE.format(rank)
    if rank == 0 or not file.is_file():
        return None
    try:
        with safe_open(str(file), "pt") as f:
            meta = json.loads((f.metadata() or {})["rng"])
    except Exception as exc:  # safetensors' own error type, a missing or bad JSON part
        raise PeftlabError(f"checkpoint {file}: unreadable generators ({exc})") from None
    return {"tensors": read_safetensors(file, "checkpoint generators"), "meta": meta}


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors keyed ``index.key``, JSON for everything else)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, extra in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(extra)
    return {"state": state, "param_groups": meta["param_groups"]}


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def buffer_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer, copied (two buffers may be views of one storage, which safetensors refuses)."""
    return {n: b.detach().cpu().clone().contiguous() for n, b in model.named_buffers()}


# ---- save / load -------------------------------------------------------------------------------


def save_checkpoint(method_dir: Path, model: nn.Module, optimizer: Any, scheduler: Any,
                    progress: Progress, keep: int, buffers: bool = False,
                    rank_rngs: dict[int, bytes] | None = None) -> Path:
    """Write one checkpoint atomically, then drop all but the newest ``keep``.

    ``buffers``: also save ``model``'s buffers (loops whose model has running statistics);
    ``rank_rngs``: the other processes' generators under a launcher (rank_rng_states).
    """
    root = checkpoint_root(method_dir)
    name = f"step-{progress.step:08d}"
    tmp, final = root / f".{name}.tmp", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_safetensors(trainable_tensors(model), tmp / "trainable.safetensors")
        opt_tensors, opt_meta = split_optimizer_state(optimizer.state_dict())
        save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        rng_tensors, rng_meta = rng_state()
        save_safetensors(rng_tensors, tmp / "rng.safetensors")
        if buffers and buffer_tensors(model):
            save_safetensors(buffer_tensors(model), tmp / BUFFERS_FILE)
        for r, payload in (rank_rngs or {}).items():
            (tmp / RANK_RNG_FILE.format(r)).write_bytes(payload)
        state = {"format": FORMAT, "progress": progress.__dict__, "optimizer": opt_meta,
                 "scheduler": scheduler.state_dict(), "rng": rng_meta}
        (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PeftlabError(f"checkpoint {final}: cannot write ({exc.strerror or exc})") from None
    for old in complete_checkpoints(method_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: nn.Module, rank: int | None = None) -> Resumed:
    """Read a checkpoint and put its tensors into ``model``'s trainable parameters.

    ``rank``: whose generators to restore (default: this process's rank under a launcher).
    """
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PeftlabError(f"checkpoint {path}: unreadable state ({exc})") from None
    if state.get("format") != FORMAT:
        raise PeftlabError(f"checkpoint {path}: format {state.get('format')!r}, this peftlab reads {FORMAT}")
    _copy_saved(path, "trainable.safetensors", "checkpoint weights",
                {n: p for n, p in model.named_parameters() if p.requires_grad},
                "its tensors do not match this method's trainable parameters")
    if (path / BUFFERS_FILE).is_file():
        _copy_saved(path, BUFFERS_FILE, "checkpoint buffers", dict(model.named_buffers()),
                    "its buffers do not match this method's model")
    return Resumed(
        progress=Progress(**state["progress"]),
        optimizer=join_optimizer_state(load_file(str(path / "optimizer.safetensors")), state["optimizer"]),
        scheduler=state["scheduler"],
        rng=_rank_rng(path, launcher_rank() if rank is None else rank)
        or {"tensors": load_file(str(path / "rng.safetensors")), "meta": state["rng"]},
        path=path,
    )


def _copy_saved(path: Path, file: str, what: str, own: dict[str, torch.Tensor], mismatch: str) -> None:
    """Copy the tensors saved in ``path / file`` into ``own`` (each cast to its target's device and
    dtype); the names must be exactly ``own``'s, else ``mismatch`` is the error."""
    saved = read_safetensors(path / file, what)
    if set(saved) != set(own):
        raise PeftlabError(f"checkpoint {path}: {mismatch}")
    with torch.no_grad():
        for name, t in own.items():
            t.copy_(saved[name].to(t.device, t.dtype))


def restore_rng(resumed: Resumed) -> None:
    set_rng_state(resumed.rng["tensors"], resumed.rng["meta"])


def clear_checkpoints(method_dir: Path) -> None:
    shutil.rmtree(checkpoint_root(method_dir), ignore_errors=True)
