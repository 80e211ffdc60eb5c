"""Sub-second CPU probes, measured once per machine and cached: what peftlab.backbones.precision
(bf16 or fp32 autocast) and peftlab.backbones.dropout (which mask sampler) decide by, since what is
faster depends on the CPU and cannot be read from its flags.

:func:`fastest` times alternatives in alternating rounds (a burst of other load hits every side) and
keeps each side's fastest pass; :func:`cached_figures` stores a probe's figures under a key in a
JSON file of ``$PEFTLAB_CACHE``, so a run measures once; :func:`machine_id` names the CPU for keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from peftlab.backbones.gguf_cache import cache_root
from peftlab.infra.io import atomic_write_json


def fastest(sides: Mapping[str, Callable[[], object]], rounds: int, budget_s: float) -> dict[str, float]:
    """Each side's fastest of ``rounds`` passes (seconds) after one warm-up pass each; the rounds
    alternate the sides and stop early once ``budget_s`` has passed."""
    best = {k: float("inf") for k in sides}
    for fn in sides.values():
        fn()
    start = time.perf_counter()
    for _ in range(rounds):
        for k, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return best


def machine_id() -> str:
    """CPU model name and a hash of its flags (the same model can differ in what is enabled)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = {"Features": "flags"}.get(key.strip(), key.strip())  # ARM names its flags Features
                if key in ("model name", "flags"):
                    found.setdefault(key, value.strip())
                if len(found) == 2:
                    break
    except OSError:
        pass
    model = found.get("model name") or platform.processor() or platform.machine()
    flags = " ".join(sorted(found.get("flags", "").split()))
    return f"{model}|flags {hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def read_entries(path: Path) -> dict[str, Any]:
    """A cache file's entries; {} when it is missing, unreadable or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    return dict(entries) if isinstance(entries, dict) else {}


def cached_figures(file: str, key: str, fields: tuple[str, ...],
                   run: Callable[[], Mapping[str, float]]) -> dict[str, float]:
    """``fields`` of ``key`` in ``$PEFTLAB_CACHE/<file>``, or ``run()``'s figures, stored there (rounded).

    An unreadable or malformed file or entry is measured over; a file that cannot be written only
    costs a new measurement next time (the run itself goes on)."""
    path = cache_root() / file
    entries = read_entries(path)
    got = entries.get(key)
    if isinstance(got, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return {f: float(got[f]) for f in fields}
    figures = dict(run())
    entries[key] = {**{f: round(float(figures[f]), 3) for f in fields}, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):
        atomic_write_json(path, {"version": 1, "entries": entries})
    return {f: float(figures[f]) for f in fields}
