"""Search for the maximum sustainable throughput (docs/design.md's definition).

A rate is *sustained* when achieved >= ``min_achieved_ratio`` (99%) of scheduled and p99 latency
<= the SLO (``loadgen.results.verdict``: a measured run comes with its verdict already judged by
``judge``; a simulated one is judged by the same ``meets_targets``).
The search brackets the boundary (doubling up from a start rate, or halving down),
bisects it to a relative precision, then confirms: a run at 95% of the found rate must be
sustained and a run at 105% must not be, both repeated; a confirmation that disagrees is reported,
not hidden. ``measure`` is any callable rate -> RunOutcome, so the logic is tested on a simulated
system whose capacity is known.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from loadgen.results.verdict import meets_targets


class RunOutcome(msgspec.Struct, frozen=True):
    """What one measured run at one offered rate gave."""

    offered_tps: float
    achieved_tps: float
    p99_ms: float
    #: False when the generator fell behind its schedule: the run measured the generator too.
    generator_kept_schedule: bool = True
    #: Transfers scheduled in the window / its length (None: taken as ``offered_tps``).
    scheduled_tps: float | None = None
    #: The run's verdict from ``loadgen.results.verdict.judge`` (None: judged from the figures above).
    sustained: bool | None = None


class Trial(msgspec.Struct, frozen=True):
    offered_tps: float
    achieved_tps: float
    p99_ms: float
    sustained: bool
    phase: str  # "bracket", "bisect", "confirm-low" or "confirm-high"
    generator_kept_schedule: bool = True


class SearchResult(msgspec.Struct, frozen=True):
    max_sustainable_tps: float
    slo_p99_ms: float
    confirmed: bool  # every confirm-low run sustained and every confirm-high run did not
    note: str
    trials: list[Trial]

    def interval(self) -> tuple[float, float]:
        """Rates between which the capacity lies, by every trial of this search.

        With consistent trials (every sustained rate below every failed one) that is [highest
        sustained, lowest failed]: the search's resolution. Noisy trials (a failure below a
        success) widen it to the whole region of disagreement, so noise is never hidden.
        """
        return capacity_interval(self.trials, self.max_sustainable_tps)

    @property
    def generator_limited(self) -> bool:
        """A failed trial near the boundary failed with the generator behind its schedule."""
        _, high = self.interval()
        return any(not t.sustained and not t.generator_kept_schedule and t.offered_tps <= high for t in self.trials)


def capacity_interval(trials: list[Trial], found_tps: float) -> tuple[float, float]:
    """[min(max sustained, min failed), max(max sustained, min failed)] over ``trials``, widened to
    hold ``found_tps``: a maximum is never reported outside its own band.

    (A 105% confirmation that sustained puts the highest sustained rate above the bisection's
    answer; the interval was once [2,244,375, 2,315,625] around a maximum of 2,137,500.)
    """
    ok = [t.offered_tps for t in trials if t.sustained]
    failed = [t.offered_tps for t in trials if not t.sustained]
    if not ok:
        return 0.0, max(min(failed, default=found_tps), found_tps)
    if not failed:
        return min(max(ok), found_tps), max(max(ok), found_tps)
    a, b = max(ok), min(failed)
    return min(a, b, found_tps), max(a, b, found_tps)


def sustained(outcome: RunOutcome, slo_p99_ms: float, min_achieved_ratio: float = 0.99) -> bool:
    """The outcome's own verdict if it has one, else ``meets_targets`` on achieved / scheduled."""
    if outcome.sustained is not None:
        return outcome.sustained
    scheduled = outcome.scheduled_tps if outcome.scheduled_tps is not None else outcome.offered_tps
    ratio = min(outcome.achieved_tps / scheduled, 1.0) if scheduled > 0 else 0.0
    return meets_targets(ratio, outcome.p99_ms, slo_p99_ms=slo_p99_ms, min_achieved_ratio=min_achieved_ratio)


def find_max_sustainable(
    measure: Callable[[float], RunOutcome],
    *,
    slo_p99_ms: float,
    start_tps: float,
    max_tps: float,
    min_tps: float = 1_000.0,
    precision: float = 0.05,
    confirm_repeats: int = 1,
    min_achieved_ratio: float = 0.99,
    growth: float = 2.0,
    progress: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Bracket (multiplying or dividing by ``growth``), bisect to ``precision`` (relative), confirm.

    A start near the answer with a small ``growth`` (e.g. a repeat seeded with the previous
    repeat's answer) saves trials; the answer is found the same way either way.
    """
    if not 0 < min_tps <= start_tps <= max_tps:
        raise ValueError(f"need 0 < min_tps <= start_tps <= max_tps, got {min_tps}, {start_tps}, {max_tps}")
    if growth <= 1.0 or precision <= 0:
        raise ValueError(f"need growth > 1 and precision > 0, got growth {growth}, precision {precision}")
    trials: list[Trial] = []

    def run(rate: float, phase: str) -> bool:
        outcome = measure(rate)
        ok = sustained(outcome, slo_p99_ms, min_achieved_ratio)
        trial = Trial(rate, outcome.achieved_tps, outcome.p99_ms, ok, phase, outcome.generator_kept_schedule)
        trials.append(trial)
        if progress is not None:
            progress(trial)
        return ok

    # Bracket: lo sustained, hi not (hi = None while no failure is seen below max_tps).
    lo: float | None = None
    hi: float | None = None
    rate = start_tps
    if run(rate, "bracket"):
        lo = rate
        while hi is None and lo < max_tps:
            rate = min(lo * growth, max_tps)
            if run(rate, "bracket"):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while lo is None and hi > min_tps:
            rate = max(hi / growth, min_tps)
            if run(rate, "bracket"):
                lo = rate
            else:
                hi = rate
    if lo is None:
        return SearchResult(0.0, slo_p99_ms, False, f"not sustained even at {min_tps:,.0f}/s", trials)
    if hi is None:
        return SearchResult(lo, slo_p99_ms, False, f"sustained up to the search ceiling {max_tps:,.0f}/s", trials)

    while (hi - lo) / lo > precision:
        mid = (lo + hi) / 2
        if run(mid, "bisect"):
            lo = mid
        else:
            hi = mid

    low_ok = [run(lo * 0.95, "confirm-low") for _ in range(confirm_repeats)]
    high_ok = [run(lo * 1.05, "confirm-high") for _ in range(confirm_repeats)]
    confirmed = all(low_ok) and not any(high_ok)
    note = (
        "confirmed"
        if confirmed
        else (
            f"confirmation disagrees: 95% sustained {sum(low_ok)}/{len(low_ok)}, "
            f"105% sustained {sum(high_ok)}/{len(high_ok)} (noisy machine or a soft knee)"
        )
    )
    return SearchResult(lo, slo_p99_ms, confirmed, note, trials)
