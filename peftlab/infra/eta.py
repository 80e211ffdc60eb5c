"""A rough training-time estimate from timed optimizer steps early in a method's run.

Printed as soon as those steps are done (before the rest of the run) and stored in the result
next to the measured training time, so the estimate can be judged afterwards.

The first steps of a run are slow for reasons that do not repeat (memory allocation, kernel
selection, the data loader's first batches, lazy initialisation in the optimizer): averaging them
in overestimated a drugreview run 2.4-fold (201 s estimated, 85 s taken). The estimate therefore
skips ``WARMUP_STEPS`` steps and extrapolates from the median of the ``TIMED_STEPS`` after them
(the median also ignores a single step slowed by a checkpoint save).
"""

from __future__ import annotations

import statistics

#: optimizer steps run before the pace is measured (their time is counted, their pace is not)
WARMUP_STEPS = 2
#: optimizer steps whose median duration is the steady pace
TIMED_STEPS = 3


def remaining_s(elapsed_s: float, steps_done: int, steps_left: int) -> float:
    """Seconds for ``steps_left`` more steps at the average pace of the ``steps_done`` timed ones."""
    return elapsed_s / steps_done * steps_left if steps_done > 0 else 0.0


def estimate_total_s(step_s: list[float], total_steps: int, warmup: int = WARMUP_STEPS) -> float | None:
    """The whole training time: the steps already taken (``step_s``, each one's seconds, warm-up
    included) plus the remaining ones at the median pace of the steps after the warm-up; None
    while no step after the warm-up has been timed."""
    steady = step_s[warmup:]
    if not steady:
        return None
    return sum(step_s) + statistics.median(steady) * max(total_steps - len(step_s), 0)


def eta_line(label: str, total_s: float, steps: int) -> str:
    mins = f" ({total_s / 60:.1f} min)" if total_s >= 120 else ""
    return (f"{label}: training will take about {total_s:.0f} s{mins} "
            f"(timed over {TIMED_STEPS} of {steps} steps after {WARMUP_STEPS} warm-up steps; evaluation not included)")
