"""A rough training-time estimate from the first few timed optimizer steps of a method's run.

Printed as soon as those steps are done (before the rest of the run) and stored in the result
next to the measured training time, so the estimate can be judged afterwards.
"""

from __future__ import annotations

#: optimizer steps timed before the estimate is made (the very first step pays warm-up costs,
#: so a few are averaged)
TIMED_STEPS = 3


def remaining_s(elapsed_s: float, steps_done: int, steps_left: int) -> float:
    """Seconds for ``steps_left`` more steps at the average pace of the ``steps_done`` timed ones."""
    return elapsed_s / steps_done * steps_left if steps_done > 0 else 0.0


def eta_line(label: str, total_s: float, steps: int) -> str:
    mins = f" ({total_s / 60:.1f} min)" if total_s >= 120 else ""
    return (f"{label}: training will take about {total_s:.0f} s{mins} "
            f"(timed from its first {TIMED_STEPS} of {steps} steps; evaluation not included)")
