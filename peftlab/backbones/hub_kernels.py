"""No kernel downloads from the Hugging Face Hub that the user did not ask for.

Two dependencies fetch compiled kernels from the Hub on their own; :func:`install` stops both.

bitsandbytes (>= 0.50), when imported on a CPU with AVX512-BF16, asks the ``kernels`` package for
``kernels-community/quantization-bitsandbytes``: a download of compiled code from the Hub, with a
network round trip (or, offline, a "Skipping publisher trust check ..." line on stderr). And it is
imported by ``import peft`` whenever it is installed, so every peftlab command would do this,
quantised or not.

peftlab fetches no kernels from a hub unless the user asks (``PEFTLAB_HUB_KERNELS=1``). Importing
bitsandbytes ourselves up front would cost ~3 s on every command, so instead a meta-path finder
wraps bitsandbytes' first import: while its package body runs, ``kernels.get_kernel`` raises, and
bitsandbytes takes its own documented fallback (its portable CPU 4-bit path, the one it uses
whenever the kernel cannot be loaded) without logging about it. ``kernels`` itself is left as it
is for everything else, and nothing changes once bitsandbytes is imported.

transformers (>= 5.25) loads every model with hub kernels on by default; on CUDA its first
``train()`` / ``eval()`` swaps layers for kernels downloaded from the Hub. Its own switch,
``USE_HUB_KERNELS``, is turned off unless the user set it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

OPT_IN = "PEFTLAB_HUB_KERNELS"
#: the module whose import asks the Hub for a kernel, and the logger its fallback warns on
WRAPPED = "bitsandbytes"
FALLBACK_LOGGER = "bitsandbytes.backends.cpu.ops"


class HubKernelsRefused(ImportError):
    """What ``kernels.get_kernel`` raises while bitsandbytes is being imported."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise HubKernelsRefused(f"peftlab does not fetch hub kernels unless {OPT_IN}=1")


@contextlib.contextmanager
def hub_kernels_refused() -> Iterator[None]:
    """``kernels.get_kernel`` refuses, and bitsandbytes' fallback warning is muted, inside the block.

    With ``kernels`` not yet imported, a stand-in module takes its place for the block (so
    ``from kernels import get_kernel`` gets the refusing function); an imported ``kernels`` has
    only its ``get_kernel`` swapped. Both are restored afterwards.
    """
    real = sys.modules.get("kernels")
    if real is None:
        stand_in = types.ModuleType("kernels")
        stand_in.get_kernel = _refuse  # type: ignore[attr-defined]
        sys.modules["kernels"] = stand_in
    else:
        saved = real.__dict__.get("get_kernel")
        real.get_kernel = _refuse  # type: ignore[attr-defined]
    log = logging.getLogger(FALLBACK_LOGGER)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
        if real is None:
            if sys.modules.get("kernels") is stand_in:
                del sys.modules["kernels"]
        elif saved is not None:
            real.get_kernel = saved  # type: ignore[attr-defined]


class _RefusingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self.inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with hub_kernels_refused():
            self.inner.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes with the other finders and wraps its loader; nothing else."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != WRAPPED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RefusingLoader(spec.loader)
                return spec
        return None


#: transformers (>= 5.25) reads this at every ``from_pretrained``; unset means "YES"
TRANSFORMERS_SWITCH = "USE_HUB_KERNELS"


def install() -> None:
    """Refuse unrequested hub kernels, unless the user opted in (``PEFTLAB_HUB_KERNELS=1``):

    * transformers 5.25 made ``from_pretrained(use_kernels=None)`` mean *on*: on CUDA, the first
      ``model.train()`` / ``model.eval()`` then kernelizes the model with layers downloaded from
      the Hub (``kernels-community/activation``, ``.../rotary``; offline, the load fails). Its own
      switch ``USE_HUB_KERNELS`` is set to ``NO`` unless the user set it (so ``YES`` still wins);
      child processes (workers, ``accelerate launch``) inherit it.
    * bitsandbytes' import: the meta-path finder above, first on ``sys.meta_path`` (once).
    """
    if os.environ.get(OPT_IN, "").strip().lower() in {"1", "true", "yes", "on"}:
        return
    os.environ.setdefault(TRANSFORMERS_SWITCH, "NO")
    if WRAPPED in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
