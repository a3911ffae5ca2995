"""Measuring again what the host's steal spoiled (issue 21).

On a shared VM the hypervisor's steal came in bursts of 0.1-0.57 of the 2 cores: a run or search
trial in such a window had fewer cores than its file reports, so its verdict and CPU per payment
say less about the server. ``verdict.steal_spoiled`` is the one rule (5% of the cores over the
window); ``least_stolen`` is the one loop every search and script uses to measure such a window
again (``compare --steal-retries``, ``benchmarks/plan_first_cut.py``,
``benchmarks/test_bench_plan.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from loadgen.results.run import RunResult
from loadgen.results.verdict import steal_spoiled

T = TypeVar("T")


def least_stolen(
    measure: Callable[[], T],
    stolen: Callable[[T], tuple[float, int]],
    retries: int,
    *,
    before_retry: Callable[[], None] | None = None,
) -> tuple[T, list[T]]:
    """``measure()`` again, up to ``retries`` times, while ``stolen`` (cores stolen, of how many) says
    the host's steal spoiled it; the least-stolen attempt, and the others (to set aside, not lose).

    When the retries run out every attempt was spoiled, and the kept one is still spoiled: the
    caller says so (``steal_spoiled`` on what it kept).
    """
    attempts: list[tuple[float, T]] = []
    for attempt in range(retries + 1):
        if attempt and before_retry is not None:
            before_retry()
        value = measure()
        cores, of_cores = stolen(value)
        attempts.append((cores, value))
        if not steal_spoiled(cores, of_cores):
            break
    kept = min(range(len(attempts)), key=lambda i: attempts[i][0])
    return attempts[kept][1], [v for i, (_, v) in enumerate(attempts) if i != kept]


def result_steal(result: RunResult) -> tuple[float, int]:
    """Cores the host's steal took over a run's window, and the machine's cores ((0, 0): not recorded)."""
    cpu = result.machine_cpu
    return (0.0, 0) if cpu is None else (cpu.stolen_cores, cpu.cores)
