"""Dropout on a CPU without torch's slow Bernoulli sampler, where this CPU makes that faster.

Why: a profile of a MiniLM-L6 LoRA training step (bf16 autocast, one thread, AMD EPYC, torch
2.13) has ``aten::bernoulli_`` as its largest op, 31% of the step's CPU time, above every matmul:
peft puts a dropout in front of each adapted linear, the backbone has its own, and torch's CPU
``bernoulli_(p)`` draws a double per element (~6 ns) unless it runs MKL's vectorised sampler, which
torch uses on Intel CPUs only. A keep mask needs far fewer random bits.

:func:`keep_mask` decides each element from 32 uniform bits, ``u``, dropping it when
``u < round(p * 2**32)``: dropped with probability ``p`` to within 2**-33 (torch's own sampler
compares a float to ``p``). It draws those bits lazily. The first 8 bits of ``u`` settle all but
one element in 256: above the threshold's top byte, kept; below it, dropped. Only an element whose
byte equals the top byte draws the other 24 bits, and compares them with the rest of the threshold.
The decisions are exactly those of comparing all 32 bits, at about 8.1 random bits an element instead
of 32. The per-byte comparisons run eight bytes at a time in int64 arithmetic: torch's uint8
comparisons are several times slower than the whole rest of the mask. Profiled on a MiniLM-L6 LoRA
step (bf16, one thread, AMD EPYC), torch's ``random_`` was 9% of the step with 32 bits an element.

The dropout is the same: each element kept independently with probability 1 - p and scaled by
1 / (1 - p), its mask kept for backward in the input's dtype as torch's CPU dropout keeps its noise
(so peftlab.estimate.activations counts both alike). Only the random stream differs: the same seed
draws other masks than torch's sampler would, as another seed would.

Measure, never assume (the sampler torch picks depends on the CPU's vendor): ``PEFTLAB_CPU_DROPOUT``
= ``torch`` | ``bits`` | ``probe`` (default ``probe``). ``probe`` times both dropouts once per
machine, torch version and thread count (cached in ``$PEFTLAB_CACHE/cpu_dropout.json``, well under
a second) and swaps only where ``bits`` is at least :data:`MIN_SPEEDUP` faster. A GPU keeps
torch's fused dropout. The test suite sets ``torch`` so its exact comparisons do not depend on the
CPU; tests/test_dropout.py checks this module directly.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.backbones.cpu_probe import cached_figures, fastest, machine_id
from peftlab.infra.errors import PeftlabError

ENV = "PEFTLAB_CPU_DROPOUT"
ENV_VALUES = ("torch", "bits", "probe")
#: swap only for a clear gain: a dropout is a fraction of a step, so a small sampler gain is noise
MIN_SPEEDUP = 1.5
CACHE_FILE = "cpu_dropout.json"
#: what the probe times (in its cache key: figures of an older probe are measured again); 2:
#: whole dropouts, with the lazily drawn mask (before: the noise alone, 32 bits an element)
PROBE_VERSION = "dropout v2"
#: elements per probe mask: a (32 x 64 x 256) activation, the order of a small model's
PROBE_ELEMENTS = 1 << 19


def drop_threshold(p: float) -> int:
    """The int32 value a uniform 32-bit draw must reach to keep its element: P(draw < t) = p."""
    return -(1 << 31) + round(p * (1 << 32))


def _signed(v: int) -> int:
    """An unsigned 64-bit pattern as the int64 torch holds it."""
    return v - (1 << 64) if v >= (1 << 63) else v


_LOW7 = _signed(0x7F7F7F7F7F7F7F7F)  # each byte's low 7 bits
_ONES = 0x0101010101010101  # each byte's bit 0


def _bytes_at_least(words: torch.Tensor, c: int) -> torch.Tensor:
    """Per byte of the int64 ``words``: 1 where the byte (unsigned) is >= ``c`` (1..255), else 0
    (as int64 words of 0x00/0x01 bytes). The byte's carry out of ``b + (256 - c)``, from its low 7
    bits' sum (which cannot carry into the next byte) and the two top bits."""
    k = 256 - c
    total = torch.bitwise_and(words, _LOW7).add_(_signed(int.from_bytes(bytes([k & 0x7F]) * 8, "little")))
    top = total.bitwise_or_(words) if k >= 128 else total.bitwise_and_(words)  # carry = b7 | c7, or b7 & c7
    return top.bitwise_right_shift_(7).bitwise_and_(_ONES)


def _bytes_equal(words: torch.Tensor, h: int) -> torch.Tensor:
    """Per byte of the int64 ``words``: bit 7 set where the byte equals ``h``, every other bit 0."""
    y = torch.bitwise_xor(words, _signed(int.from_bytes(bytes([h]) * 8, "little")))
    nonzero = torch.bitwise_and(y, _LOW7).add_(_LOW7).bitwise_or_(y).bitwise_or_(_LOW7)
    return nonzero.bitwise_not_()


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """True where a dropout keeps its element (probability 1 - p): each element's 32 uniform bits
    compared with :func:`drop_threshold`, the bits drawn lazily (this module's docstring)."""
    n = math.prod(shape)
    t = round(p * (1 << 32))  # drop iff the element's 32 bits, unsigned, are below t
    if t <= 0 or t >= 1 << 32:
        return torch.full(shape, t <= 0, dtype=torch.bool, device=device)
    top, rest = t >> 24, t & 0xFFFFFF
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None, generator=generator)  # the full int64 range: 8 uniform bytes each
    if top == 255:
        kept = torch.zeros_like(words)  # no byte is above the top byte
    else:
        kept = _bytes_at_least(words, top + 1)
    keep = kept.view(torch.uint8)[:n].view(torch.bool)  # 0x00/0x01 bytes: a valid bool view
    if rest:  # a byte equal to the top byte: its element's other 24 bits decide
        ties = _bytes_equal(words, top)
        at = ties.nonzero().squeeze(1)
        if at.numel():
            lanes = ties[at].view(torch.uint8).view(-1, 8).nonzero()
            pos = at[lanes[:, 0]] * 8 + lanes[:, 1]
            pos = pos[pos < n]
            more = torch.empty(pos.numel(), dtype=torch.int64, device=device).random_(0, 1 << 24, generator=generator)
            keep[pos] = more.ge(rest)
    else:  # the threshold is a multiple of 2**24: a tie keeps its element
        keep |= _bytes_equal(words, top).bitwise_right_shift_(7).bitwise_and_(_ONES).view(torch.uint8)[:n].view(torch.bool)
    return keep.view(shape)


def drop(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dropout of ``x`` (0 < p < 1) with :func:`keep_mask`: ``x`` times the mask as 0/1 in ``x``'s
    dtype (kept by autograd for backward, as torch's CPU dropout keeps its noise), then the scale
    1 / (1 - p) as a Python scalar, in place. A CPU multiplies bf16/fp16 by a scalar in fp32 and
    rounds once, so a reduced-precision output is bit for bit the fp32 dropout of the same input
    cast back (see :class:`BitsDropout`). The mask goes bool -> uint8 (a view) -> ``x``'s dtype:
    torch converts uint8 several times faster than bool, and a product with a bool mask would
    convert it again in backward."""
    keep = keep_mask(x.shape, p, x.device, generator).view(torch.uint8).to(x.dtype)
    return (x * keep).mul_(1.0 / (1.0 - p))


class BitsDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from :func:`keep_mask`; elsewhere, and in eval mode, the same
    as ``nn.Dropout``. A subclass, so code that looks for dropouts by type still finds it.

    A bf16/fp16 input is masked in its own dtype and then multiplied by the Python scalar
    1 / (1 - p) (:func:`drop`): a CPU computes reduced precision in fp32 ("opmath") and rounds once, so the
    output is bit for bit the fp32 dropout of the same input cast back (a bf16 noise tensor would
    round the scale itself, 1/0.9 to 1.109, and differ), and so is the gradient. That is what lets
    :func:`lean_lora_casts` skip peft's cast of LoRA inputs to fp32 under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.p >= 1.0:
            return super().forward(x)
        return drop(x, self.p)


def swap_dropouts(model: nn.Module) -> int:
    """Replace every ``nn.Dropout`` (exactly that type, p > 0) in ``model`` by a :class:`BitsDropout`
    of the same p; returns how many. Dropouts hold no weights, so saving and loading are unaffected."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0.0:
                swap = BitsDropout(child.p)
                swap.train(child.training)  # a model swapped in eval mode stays in eval mode
                parent._modules[name] = swap  # also inside peft's ModuleDicts
                swapped += 1
    return swapped


@dataclass(frozen=True)
class DropoutProbe:
    """Nanoseconds per element of one fp32 dropout in training: torch's (``F.dropout``: its
    Bernoulli noise, then the product) and :func:`drop`."""

    torch_ns: float
    bits_ns: float

    @property
    def speedup(self) -> float:
        return self.torch_ns / self.bits_ns if self.bits_ns > 0 else 0.0


def measure(elements: int = PROBE_ELEMENTS, rounds: int = 5, budget_s: float = 0.5) -> DropoutProbe:
    """Time both samplers on ``elements`` floats (peftlab.backbones.cpu_probe.fastest: alternating
    rounds until ``rounds`` or ``budget_s``, each side's fastest pass)."""
    p, x = 0.1, torch.randn(elements)
    best = fastest({"torch": lambda: torch.nn.functional.dropout(x, p, True),
                    "bits": lambda: drop(x, p)}, rounds, budget_s)
    return DropoutProbe(torch_ns=best["torch"] / elements * 1e9, bits_ns=best["bits"] / elements * 1e9)


def cached_probe(threads: int | None = None, run: Callable[[], DropoutProbe] = measure) -> DropoutProbe:
    """This machine's figures, measured (and stored) the first time (cpu_probe.cached_figures)."""
    threads = threads or torch.get_num_threads()
    key = f"{machine_id()}|torch {torch.__version__}|{threads} threads|{PROBE_VERSION}"
    got = cached_figures(CACHE_FILE, key, ("torch_ns", "bits_ns"), lambda: vars(run()))
    return DropoutProbe(got["torch_ns"], got["bits_ns"])


def env_choice(env: Mapping[str, str]) -> str:
    """``PEFTLAB_CPU_DROPOUT`` (default ``probe``); anything else is refused in one line."""
    raw = env.get(ENV, "").strip().lower() or "probe"
    if raw not in ENV_VALUES:
        raise PeftlabError(f"{ENV}={env.get(ENV)!r}: expected one of {', '.join(ENV_VALUES)}")
    return raw


def choose(device_type: str, env: Mapping[str, str] | None = None,
           probe: Callable[[], DropoutProbe] = cached_probe) -> tuple[bool, str]:
    """Whether to swap this run's dropouts (pure given ``probe``), and why, in words for the result."""
    if device_type != "cpu":
        return False, f"torch (fused on {device_type})"
    choice = env_choice(os.environ if env is None else env)
    if choice != "probe":
        return choice == "bits", f"{choice} ({ENV})"
    got = probe()
    use = got.speedup >= MIN_SPEEDUP
    return use, (f"{'bits' if use else 'torch'} (probe: torch's dropout {got.torch_ns:.2f} ns, peftlab's "
                 f"{got.bits_ns:.2f} ns per element, {got.speedup:.2f}x {'>=' if use else '<'} {MIN_SPEEDUP}x)")


def lean_lora_layers(model: nn.Module) -> list[nn.Module]:
    """peft's plain LoRA linear layers of ``model`` (no DoRA or other variant) whose dropout is a
    :class:`BitsDropout` (or absent: p = 0), and which cast their input to fp32 before it."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft is a dependency; a model without it has nothing to lean
        return []
    return [m for m in model.modules()
            if isinstance(m, LoraLinear) and not m.lora_variant and getattr(m, "cast_input_dtype_enabled", True)
            and all(isinstance(d, BitsDropout) or type(d) is nn.Identity for d in m.lora_dropout.values())]


@contextlib.contextmanager
def lean_lora_casts(model: nn.Module, autocast_cpu: bool) -> Iterator[int]:
    """While a CPU run trains under autocast: peft's plain LoRA layers keep their bf16 input as it is.

    Why: peft casts a LoRA layer's input to its adapter weights' dtype (fp32) before the dropout,
    and autocast casts it back to bf16 for lora_A: two copies of every adapted layer's input
    forward and two of its gradient backward. Profiled on a MiniLM-L6 LoRA step (bf16, one
    thread), the (32 x 48 x 1536) copies alone took ~100 ms a step. Under autocast lora_A and
    lora_B compute in bf16 either way, and :class:`BitsDropout` of a bf16 input is bit for bit the
    fp32 dropout cast back, so the model computes exactly the same numbers without the copies
    (tests/test_dropout.py checks outputs and gradients bit for bit). Yields how many layers; peft's
    casting is restored after. Without autocast nothing changes (the cast is then peft's own affair)."""
    layers = lean_lora_layers(model) if autocast_cpu else []
    for m in layers:
        m.cast_input_dtype_enabled = False
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.cast_input_dtype_enabled = True


def apply(model: nn.Module, device_type: str, env: Mapping[str, str] | None = None,
          probe: Callable[[], DropoutProbe] = cached_probe) -> str | None:
    """Swap ``model``'s dropouts where :func:`choose` says so; the reason, or None when it has none."""
    if not any(type(m) is nn.Dropout and m.p > 0.0 for m in model.modules()):
        return None
    use, why = choose(device_type, env, probe)
    if use:
        swap_dropouts(model)
    return why
