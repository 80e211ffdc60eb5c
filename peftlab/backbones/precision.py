"""Which precision a run computes in: fp32, or bf16 autocast where that is really faster.

On CUDA, ``train.mixed_precision: auto`` is bf16 autocast where the GPU supports it (fp16
otherwise). On a CPU the answer depends on the CPU, and a flag check cannot give it: with torch
2.13 and one thread, a 1280x384 by 384x1536 matmul runs 2.8x faster in bf16 on an AMD EPYC with
``avx512_bf16``, but 0.56x as fast on an Intel Xeon that lists the same flag. So on CPU ``auto``
*measures*: :func:`measure` times the model's own feed-forward matmuls (tokens x hidden x ffn,
up and down projection) in fp32 and under bf16 autocast, and :func:`prefers_bf16` takes bf16 only
when it is clearly faster (:data:`BF16_MIN_SPEEDUP`): a small gain is not worth results that
differ from fp32 in the last digits, and the elementwise work around the matmuls (norms, softmax,
casts) gains less than the matmuls do. The figures are cached per machine (CPU model and flags),
torch version, thread count and shapes in ``$PEFTLAB_CACHE/cpu_precision.json``
(:func:`cached_probe`), so a run measures once.

Only autocast is ever used: master weights, gradients, optimizer state and the loss stay fp32
(autocast runs matmuls in bf16 and keeps ``cross_entropy`` in fp32; accelerate's
``Accelerator(mixed_precision="bf16", cpu=True)`` wraps the model's forward in
``torch.autocast("cpu", torch.bfloat16)`` and casts its outputs back to fp32).

``PEFTLAB_CPU_PRECISION`` = ``fp32`` | ``bf16`` | ``probe`` decides what ``auto`` means on a CPU
without measuring (``probe``, the default, measures). The test suite sets ``fp32`` so that its
exact comparisons never depend on which CPU runs them. An explicit ``mixed_precision`` (``no``,
``bf16``) always wins over it. A method that must stay fp32 says so in its own module
(``Method.keeps_fp32``), and that wins over everything.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from peftlab.backbones.cpu_probe import cached_figures, fastest, machine_id
from peftlab.infra.errors import PeftlabError
from peftlab.infra.distributed import is_main, world_size

ENV = "PEFTLAB_CPU_PRECISION"
ENV_VALUES = ("fp32", "bf16", "probe")
#: bf16 autocast is used on a CPU only when the probe's bf16 matmuls run at least this much faster:
#: the matmuls are most of a step but not all of it (measured: 2.8x on the matmul probe gave 1.5x
#: on a MiniLM-L6 training step), so a 1.1x probe would be no gain at all
BF16_MIN_SPEEDUP = 1.3
CACHE_FILE = "cpu_precision.json"
#: the probe's token count is the batch's, capped: more rows only make the probe slower
MAX_PROBE_TOKENS = 1024
MIN_PROBE_TOKENS = 64

Dtype = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class Shapes:
    """A feed-forward block's matmuls: (tokens x hidden) @ (hidden x ffn) and back."""

    tokens: int
    hidden: int
    ffn: int

    def __str__(self) -> str:
        return f"{self.tokens}x{self.hidden}x{self.ffn}"


@dataclass(frozen=True)
class Probe:
    """Measured matmul throughput, GFLOP/s, fp32 and under bf16 autocast."""

    fp32_gflops: float
    bf16_gflops: float

    @property
    def speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops > 0 else 0.0


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why (recorded in every RunResult)."""

    dtype: Dtype
    reason: str
    device_type: str = "cpu"

    @property
    def mixed_precision(self) -> str:
        """accelerate's ``mixed_precision`` value."""
        return "no" if self.dtype == "fp32" else self.dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """A fresh context manager: autocast to ``dtype``, or nothing for fp32."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.dtype == "bf16" else torch.float16)

    def result_fields(self) -> dict[str, str]:
        """The RunResult fields that record it."""
        return {"precision": self.dtype, "precision_reason": self.reason}


def prefers_bf16(probe: Probe, threshold: float = BF16_MIN_SPEEDUP) -> bool:
    """Whether bf16 autocast is clearly faster than fp32 (pure: the decision, apart from timing)."""
    return probe.speedup >= threshold


def shapes_of(config: Any, tokens: int) -> Shapes:
    """The feed-forward shapes of an HF model config (BERT, Llama, GPT-2, ... naming), with
    ``tokens`` (rows of one batch) clamped to [MIN_PROBE_TOKENS, MAX_PROBE_TOKENS]."""
    cfg = getattr(config, "text_config", None) or config
    hidden = next((getattr(cfg, k) for k in ("hidden_size", "n_embd", "d_model", "dim")
                   if isinstance(getattr(cfg, k, None), int)), 768)
    ffn = next((getattr(cfg, k) for k in ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim")
                if isinstance(getattr(cfg, k, None), int)), 4 * hidden)
    return Shapes(max(MIN_PROBE_TOKENS, min(MAX_PROBE_TOKENS, tokens)), hidden, ffn)


def _ffn_pass(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, autocast: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.nn.functional.linear(torch.nn.functional.linear(x, up), down)


def measure(shapes: Shapes, rounds: int = 3, budget_s: float = 0.5) -> Probe:
    """Time fp32 and bf16-autocast feed-forward matmuls at ``shapes`` on this CPU.

    fp32 tensors under autocast, as training runs them (the casts are part of the cost). One
    warm-up pass each, then alternating rounds (so a burst of other load hits both sides) until
    ``rounds`` or ``budget_s``; each side's fastest pass counts. Well under a second at
    MiniLM/SmolLM sizes.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shapes.tokens, shapes.hidden, generator=gen)
    up = torch.randn(shapes.ffn, shapes.hidden, generator=gen, requires_grad=True)
    down = torch.randn(shapes.hidden, shapes.ffn, generator=gen, requires_grad=True)
    with torch.no_grad():
        best = fastest({"fp32": lambda: _ffn_pass(x, up, down, False), "bf16": lambda: _ffn_pass(x, up, down, True)},
                       rounds, budget_s)
    flop = 4.0 * shapes.tokens * shapes.hidden * shapes.ffn
    return Probe(fp32_gflops=flop / best["fp32"] / 1e9, bf16_gflops=flop / best["bf16"] / 1e9)


def cache_key(shapes: Shapes, threads: int, machine: str | None = None) -> str:
    """What a probe's figures depend on: the machine, torch, the thread count and the shapes."""
    return f"{machine or machine_id()}|torch {torch.__version__}|{threads} threads|{shapes}"


def cached_probe(shapes: Shapes, threads: int | None = None,
                 run: Callable[[Shapes], Probe] = measure) -> Probe:
    """The cached figures for this machine and ``shapes``, measured (and stored) the first time
    (peftlab.backbones.cpu_probe.cached_figures)."""
    threads = threads or torch.get_num_threads()
    got = cached_figures(CACHE_FILE, cache_key(shapes, threads), ("fp32_gflops", "bf16_gflops"),
                         lambda: vars(run(shapes)))
    return Probe(got["fp32_gflops"], got["bf16_gflops"])


def shared_probe(shapes: Shapes) -> Probe:
    """:func:`cached_probe` on rank 0 only, its figures sent to every process of an ``accelerate
    launch``: ranks timed apart could choose differently, and timed together they slow each other."""
    if world_size() == 1:
        return cached_probe(shapes)
    from accelerate.utils import broadcast_object_list

    box = [cached_probe(shapes) if is_main() else None]
    broadcast_object_list(box, from_process=0)
    assert box[0] is not None
    return box[0]


def env_choice(env: Mapping[str, str]) -> str:
    """``PEFTLAB_CPU_PRECISION`` (default ``probe``); anything else is refused in one line."""
    raw = env.get(ENV, "").strip().lower() or "probe"
    if raw not in ENV_VALUES:
        raise PeftlabError(f"{ENV}={env.get(ENV)!r}: expected one of {', '.join(ENV_VALUES)}")
    return raw


def probe_reason(probe: Probe, shapes: Shapes, threads: int) -> str:
    verdict = ">=" if prefers_bf16(probe) else "<"
    return (f"probe {shapes}, {threads} thread(s): fp32 {probe.fp32_gflops:.0f} GFLOP/s, bf16 "
            f"{probe.bf16_gflops:.0f} GFLOP/s ({probe.speedup:.2f}x {verdict} {BF16_MIN_SPEEDUP}x)")


def resolve(setting: str, device_type: str, shapes: Callable[[], Shapes] | None = None, keep_fp32: str | None = None,
            env: Mapping[str, str] | None = None, probe: Callable[[Shapes], Probe] | None = None,
            cuda_bf16: Callable[[], bool] | None = None) -> Precision:
    """The precision for ``setting`` (``train.mixed_precision``) on ``device_type``.

    ``keep_fp32``: the method's reason to stay fp32 on this device (``Method.keeps_fp32``), or
    None. ``shapes``: returns the model's feed-forward shapes (:func:`shapes_of`), called only when
    ``auto`` probes a CPU (without it the CPU stays fp32). ``probe``: default :func:`shared_probe`.
    """
    env = os.environ if env is None else env
    if keep_fp32:
        return Precision("fp32", keep_fp32, device_type)
    if device_type == "cuda":
        if setting == "auto":
            supported = (cuda_bf16 or torch.cuda.is_bf16_supported)()
            return Precision("bf16" if supported else "fp16", "CUDA", device_type)
        return Precision("fp32" if setting == "no" else setting, "asked for", device_type)  # type: ignore[arg-type]
    if device_type != "cpu":
        return Precision("fp32", f"no autocast on {device_type}", device_type)
    if setting == "no":
        return Precision("fp32", "asked for", device_type)
    if setting == "bf16":
        return Precision("bf16", "asked for", device_type)
    if setting == "fp16":  # accelerate ignores fp16 on a CPU; say so rather than pretend
        return Precision("fp32", "fp16 asked for, but accelerate has no fp16 autocast on CPU", device_type)
    choice = env_choice(env)
    if choice != "probe":
        return Precision(choice, f"{ENV}={choice}", device_type)  # type: ignore[arg-type]
    if shapes is None:
        return Precision("fp32", "no model shapes to probe", device_type)
    at = shapes()
    measured = (probe or shared_probe)(at)
    return Precision("bf16" if prefers_bf16(measured) else "fp32", probe_reason(measured, at, torch.get_num_threads()),
                     device_type)
