"""The torch thread count decision and the busy-machine warning (pure functions)."""

from __future__ import annotations

import pytest

from peftlab.infra.threads import contention_warning, decide_threads, is_contended


@pytest.mark.parametrize(("configured", "omp", "cores", "workers", "expected"), [
    (None, None, 8, 1, 8),  # nothing asked: every core this process may use
    (None, None, 8, 3, 2),  # --parallel 3 on 8 cores: 8 // 3 each, never more threads than cores
    (None, None, 2, 4, 1),  # more workers than cores: at least one thread each
    (None, "3", 8, 1, 3),  # the user's OMP_NUM_THREADS wins over the core count
    (None, "3", 8, 4, 3),  # ... also with several workers (the user asked for it)
    (5, "3", 8, 2, 5),  # train.num_threads in the config wins over everything
    (None, "4,2", 8, 1, 4),  # a nesting list: the outer level
    (None, "", 6, 2, 3),  # set but empty, zero or junk: ignored
    (None, "0", 6, 1, 6),
    (None, "many", 6, 1, 6),
])
def test_decide_threads(configured, omp, cores, workers, expected) -> None:
    n, why = decide_threads(configured, omp, cores, workers)
    assert n == expected
    assert why


def test_contention_needs_more_load_than_cores() -> None:
    assert is_contended(2.5, 2)
    assert not is_contended(2.0, 2)
    assert not is_contended(None, 2)  # load average unknown (not Linux): no warning
    line = contention_warning(6.62, 2)
    assert "\n" not in line and "6.6" in line and "2 cores" in line


def test_comparison_names_rows_timed_on_a_busy_machine() -> None:
    from peftlab.report.compare import to_markdown
    from peftlab.results import RunResult

    def result(name: str, load: float | None) -> RunResult:
        return RunResult(name=name, method="full", task="t", backbone="b", seed=0, load_avg_start=load,
                         environment={"cores": 2})

    md = to_markdown([result("calm", 1.5), result("busy", 6.25), result("unknown", None)])
    busy = [line for line in md.splitlines() if line.startswith("Timings taken while")]
    assert len(busy) == 1 and "busy (load 6.2 on 2 cores)" in busy[0]
    assert "calm" not in busy[0] and "unknown" not in busy[0]
    assert "Timings taken while" not in to_markdown([result("calm", 1.5)])
