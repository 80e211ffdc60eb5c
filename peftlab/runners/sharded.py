"""Fully sharded data parallel (FSDP2) under ``accelerate launch --use_fsdp --fsdp_version 2``.

Each process keeps a shard of every parameter; forward and backward all-gather the full
parameters layer by layer, so a model that does not fit one GPU trains on several. The training
loop is the data-parallel one (``runners.train.fit``): FSDP2 shards parameters in place
(``fully_shard``), so the prepared model is still the model, its forward still works (every
process evaluates the whole eval set in the same order, so the all-gathers meet), and peft's
frozen and trainable parameters sit side by side in one sharded group.

What differs is the end: the trained parameters are shards (DTensors) that no single process can
save. ``unsharded_copy`` gathers them (one collective per tensor, on every process, in the same
order) into a fresh, plain copy of the prepared model, which the method saves as usual on rank 0.

accelerate only turns FSDP on for GPU-type launches; on CPU processes (gloo) it quietly falls
back to plain data parallelism. ``use_sharding`` switches such a launch to FSDP2 when the
launcher asked for FSDP, so the same config runs sharded on CPUs (that is also how the tests
verify it without GPUs). ``wrap_blocks`` gives each model's repeated block its own FSDP unit;
``refuse_unsupported`` stops what is not supported (DeepSpeed, FSDP1, ``qlora``) in one line.
Not done under FSDP: checkpoints (their optimizer state would be shards; a rerun restarts the
method). The CUDA path (NCCL, mixed precision) is the same code but has not run here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from peftlab.infra.errors import PeftlabError
from peftlab.infra.distributed import world_size


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch --use_fsdp`` sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_sharded(acc: Any) -> bool:
    return "FSDP" in str(getattr(acc, "distributed_type", ""))


def _fsdp_on_cpu(acc: Any) -> None:
    """Turn a multi-process CPU launch into FSDP with the launcher's FSDP settings (``FSDP_*``)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads FSDP_VERSION etc. from the launcher
    # both singletons: a later AcceleratorState() copies PartialState's type over its own
    acc.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP


def refuse_unsupported(method: Any) -> None:
    """Refuse, in one line, a launch peftlab cannot train sharded; call before the Accelerator exists.

    Read from the launcher's environment (``accelerate launch`` turns its flags and config file
    into ``ACCELERATE_USE_*``/``FSDP_*`` variables) because accelerate itself fails with a
    traceback building an FSDP1 plugin on a machine without GPUs. Refused: DeepSpeed (not
    implemented), FSDP1 (its flat parameters cannot mix peft's frozen and trainable tensors
    without ``use_orig_params``, and it is untested here) and methods whose weights cannot be
    sharded (``Method.shards`` False).
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise PeftlabError("accelerate launch with DeepSpeed: not supported; launch with FSDP2 "
                           "(accelerate launch --use_fsdp --fsdp_version 2 ...) or data-parallel (--multi_gpu)")
    if not fsdp_requested():
        return
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise PeftlabError(f"accelerate launch with FSDP version {version}: only FSDP2 is supported; "
                           "add --fsdp_version 2 (or fsdp_version: 2 in the accelerate config)")
    if not getattr(method, "shards", True):
        raise PeftlabError(f"{method.name}: cannot be trained under FSDP (its base weights cannot be sharded); "
                           "launch data-parallel instead (accelerate launch --multi_gpu ...)")


def use_sharding(acc: Any) -> bool:
    """Whether this run trains sharded; switches a multi-process CPU launch that asked for FSDP
    (which accelerate would run as plain data parallelism) to FSDP2."""
    if world_size() > 1 and fsdp_requested() and not is_sharded(acc) and acc.device.type == "cpu":
        _fsdp_on_cpu(acc)
    return is_sharded(acc)


def block_class(model: nn.Module) -> str | None:
    """The class name of the model's repeated blocks: the items of its longest one-class ModuleList."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len({type(x) for x in m}) == 1]
    return type(max(lists, key=len)[0]).__name__ if any(len(x) for x in lists) else None


def wrap_blocks(acc: Any, model: nn.Module) -> None:
    """Make a transformer wrap policy give every block of *this* model its own FSDP unit.

    Without ``--fsdp_transformer_layer_cls_to_wrap`` accelerate wraps the classes in the model's
    ``_no_split_modules``, which for BERT in transformers 5 includes the embeddings module; its
    FSDP2 code then shards the word embeddings a second time and fails. The block class found
    here (the repeated layer) is what the user would name. And accelerate fixes the policy on the
    first model it prepares (the plugin is shared by every method of the run), so a later method
    on another backbone would not wrap its own blocks: the policy is reset before each model.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = acc.state.fsdp_plugin
    if isinstance(plugin.auto_wrap_policy, functools.partial):
        plugin.auto_wrap_policy = plugin.auto_wrap_policy.func
    if plugin.auto_wrap_policy is transformer_auto_wrap_policy:
        names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
        block = block_class(model)
        plugin.transformer_cls_names_to_wrap = names.split(",") if names else [block] if block else None


def unsharded_copy(model: nn.Module, rebuild: Callable[[], nn.Module]) -> nn.Module:
    """A plain copy of a trained model whose parameters may be FSDP shards; ``model`` if none are.

    Must run on every process (each full tensor is an all-gather). ``rebuild`` makes a fresh
    model with the same structure and trainable flags (the method's ``prepare`` of a freshly
    loaded base); the gathered tensors overwrite all of it, so its random initialisation does not
    matter. Tensors are gathered one at a time and moved to the CPU, so a GPU never holds more
    than its shard plus one full tensor.
    """
    import torch.distributed

    if not torch.distributed.is_available():
        return model
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    for m in model.modules():  # parameters back to shards (a no-op unless left gathered)
        if isinstance(m, FSDPModule):
            m.reshard()
    full = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
            for k, v in model.state_dict().items()}
    plain = rebuild()
    plain.load_state_dict(full)
    return plain
