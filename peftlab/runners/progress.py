"""Live feedback: one way to draw a progress bar, so every loop shows the same things.

Each bar shows the elapsed time and ETA, the throughput (items/s) and, as its postfix, the last
metric the loop knows (running train loss, last eval accuracy...). ``quiet`` (``--quiet`` on the
command line) turns every bar and epoch line off, for scripts and CI logs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
#: tqdm's own layout, spelled out so ETA, rate and the metric postfix are always there
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def bar(total: int, desc: str, quiet: bool, unit: str = "ex", **kw: Any) -> tqdm:
    """A progress bar over ``total`` items (disabled when quiet)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, bar_format=BAR_FORMAT,
                mininterval=0.5, **kw)


def track(items: Iterable[T], total: int, desc: str, quiet: bool, sizes: Iterable[int] | None = None,
          unit: str = "ex") -> Iterator[T]:
    """Iterate ``items`` with a bar; ``sizes`` advances by each item's size (examples per batch)."""
    with bar(total, desc, quiet, unit) as b:
        if sizes is None:
            for x in items:
                yield x
                b.update(1)
        else:
            for x, n in zip(items, sizes):
                yield x
                b.update(n)


def metrics_text(values: dict[str, float | None]) -> str:
    """``loss 0.4123, acc 0.8125``: the last metrics, compact enough for a bar postfix or a line."""
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items() if v is not None)


def say(quiet: bool, msg: str) -> None:
    """A line on stderr (beside the bars, away from results on stdout) that does not break a bar."""
    if not quiet:
        tqdm.write(msg, file=sys.stderr)
