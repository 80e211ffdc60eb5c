"""Which launcher started this run (accelerate launch, torchrun), recorded so the report can re-run it.

``peftlab run`` records its command line in ``command.json``; under a launcher that line alone
(``peftlab run CONFIG``) would re-run the experiment in one process with a batch N times smaller
than the global batch it trained with. So the launcher's environment is recorded beside it (the
variables accelerate and torchrun set: world size, ranks, accelerate's settings) and the report's
re-run line gets the launcher prefix rebuilt from them. Pure functions of an environment mapping.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

#: variables worth keeping, by exact name or prefix (accelerate's settings, torchrun's topology)
KEEP = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")
KEEP_PREFIXES = ("ACCELERATE_", "FSDP_")

#: accelerate launch options rebuilt from the variables it sets (variable -> option taking its value)
VALUE_FLAGS = {
    "ACCELERATE_MIXED_PRECISION": "--mixed_precision",
    "ACCELERATE_DYNAMO_BACKEND": "--dynamo_backend",
    "FSDP_VERSION": "--fsdp_version",
    "FSDP_AUTO_WRAP_POLICY": "--fsdp_auto_wrap_policy",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "--fsdp_transformer_layer_cls_to_wrap",
}


def launcher_record(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """``{"world_size": N, "env": {...}}`` under a launcher, None in a plain process."""
    env = os.environ if environ is None else environ
    seen = {k: v for k, v in env.items() if k in KEEP or k.startswith(KEEP_PREFIXES)}
    if "WORLD_SIZE" not in seen and "LOCAL_RANK" not in seen:
        return None
    raw = seen.get("WORLD_SIZE", "1")
    return {"world_size": int(raw) if raw.isdigit() else 1, "env": dict(sorted(seen.items()))}


def launch_prefix(record: Mapping[str, Any]) -> str:
    """The command line before ``-m peftlab run CONFIG`` that starts the same processes again."""
    env: Mapping[str, str] = record.get("env") or {}
    n = int(record.get("world_size") or 1)
    nodes = n // int(env.get("LOCAL_WORLD_SIZE") or n) if n else 1
    if not any(k.startswith("ACCELERATE_") for k in env):
        return shlex.join(["torchrun", *(["--nnodes", str(nodes)] if nodes > 1 else []),
                           "--nproc_per_node", str(n // max(nodes, 1))])
    kind = (["--use_fsdp"] if env.get("ACCELERATE_USE_FSDP") == "true" else
            ["--use_deepspeed"] if env.get("ACCELERATE_USE_DEEPSPEED") == "true" else ["--multi_gpu"])
    args = ["accelerate", "launch", *kind, "--num_processes", str(n)]
    if nodes > 1:
        args += ["--num_machines", str(nodes)]
    for var, flag in VALUE_FLAGS.items():
        value = env.get(var)
        if value and not (var == "ACCELERATE_DYNAMO_BACKEND" and value.lower() == "no"):
            args += [flag, value]
    return shlex.join(args)
