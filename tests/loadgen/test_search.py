"""The saturation search on simulated systems whose capacity is known."""

from __future__ import annotations

import random

import numpy as np
import pytest

from loadgen.harness.search import RunOutcome, Trial, capacity_interval, find_max_sustainable
from loadgen.results.compare import Band, differs, verdict


def simulated(capacity: float, base_ms: float = 2.0, noise: float = 0.0, seed: int = 0):  # type: ignore[no-untyped-def]
    """An M/M/1-like system: latency rises as load nears capacity; beyond it, throughput caps."""
    rng = np.random.default_rng(seed)

    def measure(rate: float) -> RunOutcome:
        cap = capacity * (1 + noise * rng.standard_normal())
        achieved = min(rate, cap)
        util = min(rate / cap, 0.999)
        p99 = base_ms / (1 - util) if rate <= cap else 10_000.0
        return RunOutcome(rate, achieved, p99)

    return measure


@pytest.mark.parametrize("capacity", [7_000.0, 123_456.0, 300_000.0, 1_900_000.0])
def test_finds_the_latency_bound_capacity(capacity: float) -> None:
    slo = 20.0
    # With p99 = 2 / (1 - u), the SLO binds at u = 0.9: the true answer is 0.9 * capacity.
    truth = 0.9 * capacity
    result = find_max_sustainable(
        simulated(capacity), slo_p99_ms=slo, start_tps=50_000, max_tps=4_000_000, precision=0.02
    )
    assert truth * 0.97 <= result.max_sustainable_tps <= truth
    assert result.confirmed
    assert all(t.sustained == (t.offered_tps <= truth) for t in result.trials)


def test_throughput_bound_when_the_slo_is_loose() -> None:
    result = find_max_sustainable(simulated(50_000), slo_p99_ms=10**6, start_tps=10_000, max_tps=10**6, precision=0.01)
    # "Achieved >= 99% of offered": a system capped at 50,000/s sustains an offered 50,000 / 0.99.
    assert 50_000 * 0.98 <= result.max_sustainable_tps <= 50_000 / 0.99


def test_ceiling_and_floor_are_reported_not_guessed() -> None:
    high = find_max_sustainable(simulated(10**7), slo_p99_ms=20, start_tps=10_000, max_tps=80_000)
    assert high.max_sustainable_tps == 80_000 and not high.confirmed and "ceiling" in high.note
    low = find_max_sustainable(simulated(100), slo_p99_ms=20, start_tps=10_000, max_tps=80_000, min_tps=1_000)
    assert low.max_sustainable_tps == 0 and "not sustained" in low.note


def test_noisy_confirmation_is_reported() -> None:
    result = find_max_sustainable(
        simulated(100_000, noise=0.2, seed=3), slo_p99_ms=20, start_tps=50_000, max_tps=10**6, confirm_repeats=5
    )
    phases = [t.phase for t in result.trials]
    assert phases.count("confirm-low") == 5 and phases.count("confirm-high") == 5
    if not result.confirmed:
        assert "disagrees" in result.note


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="min_tps"):
        find_max_sustainable(simulated(1), slo_p99_ms=1, start_tps=10, max_tps=5)


def test_a_seeded_repeat_with_small_growth_finds_the_same_answer_in_fewer_trials() -> None:
    first = find_max_sustainable(simulated(400_000), slo_p99_ms=20, start_tps=300_000, max_tps=4e6, precision=0.1)
    again = find_max_sustainable(
        simulated(400_000),
        slo_p99_ms=20,
        start_tps=first.max_sustainable_tps,
        max_tps=4e6,
        precision=0.1,
        growth=1.2,
    )
    truth = 0.9 * 400_000
    for r in (first, again):
        assert truth * 0.9 <= r.max_sustainable_tps <= truth
    assert len(again.trials) < len(first.trials)


def test_the_capacity_interval_brackets_the_truth_and_widens_with_noise() -> None:
    clean = find_max_sustainable(simulated(200_000), slo_p99_ms=20, start_tps=50_000, max_tps=4e6, precision=0.05)
    low, high = clean.interval()
    assert low == clean.max_sustainable_tps
    assert low <= 0.9 * 200_000 < high <= low * 1.05 + 1e-6
    # A failure below a success (noise): the interval covers the whole region of disagreement.
    trials = [
        Trial(100.0, 100.0, 1.0, True, "bracket"),
        Trial(200.0, 150.0, 90.0, False, "bracket"),
        Trial(150.0, 150.0, 1.0, True, "bisect"),
        Trial(142.0, 100.0, 90.0, False, "confirm-low"),
        Trial(158.0, 158.0, 1.0, True, "confirm-high"),
    ]
    assert capacity_interval(trials, 150.0) == (142.0, 158.0)


def test_the_maximum_is_never_outside_its_own_band() -> None:
    """A 105% confirmation that sustained once gave "2,137,500/s (capacity in [2,244,375, 2,315,625])"."""
    found = 2_137_500.0
    trials = [
        Trial(2_137_500.0, 2_137_500.0, 5.0, True, "bisect"),
        Trial(2_315_625.0, 2_200_000.0, 50.0, False, "bisect"),
        Trial(found * 0.95, found * 0.95, 5.0, True, "confirm-low"),
        Trial(found * 1.05, found * 1.05, 5.0, True, "confirm-high"),
    ]
    low, high = capacity_interval(trials, found)
    assert low <= found <= high
    assert (low, high) == (found, 2_315_625.0)
    band = Band.of([found], [(low, high)])
    assert band.low <= band.median == found <= band.high


def test_a_trial_lost_to_a_lagging_generator_is_flagged() -> None:
    def measure(rate: float) -> RunOutcome:
        # Capacity unknown: the generator cannot offer more than 500,000/s.
        return RunOutcome(rate, min(rate, 500_000), 5.0, generator_kept_schedule=rate <= 500_000)

    result = find_max_sustainable(measure, slo_p99_ms=20, start_tps=100_000, max_tps=4e6, precision=0.05)
    assert result.generator_limited
    assert 0.95 * 500_000 / 0.99 * 0.95 <= result.max_sustainable_tps <= 500_000 / 0.99


def test_profiles_are_interleaved_in_a_seeded_order_per_repeat() -> None:
    from loadgen.harness.compare import profile_orders

    names = ["baseline", "limits", "compliance", "enforcement", "surveillance", "full", "privacy"]
    a = profile_orders(names, repeats=4, rng=random.Random(7))
    b = profile_orders(names, repeats=4, rng=random.Random(7))
    assert a == b  # reproducible from the seed
    assert all(sorted(order) == sorted(names) for order in a)  # each repeat runs every profile once
    assert len({tuple(order) for order in a}) > 1  # and not in the same order every time
    assert len({order[0] for order in profile_orders(names, repeats=50, rng=random.Random(1))}) == len(names)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # Medians 100 vs 130, spreads 10 and 12: the gap exceeds both -> different.
        (Band.of([95.0, 100.0, 105.0]), Band.of([124.0, 130.0, 136.0]), True),
        # Medians 100 vs 110, spread 30: within the run-to-run spread.
        (Band.of([85.0, 100.0, 115.0]), Band.of([108.0, 110.0, 112.0]), False),
        # One repeat each, no resolution interval: there is no spread to compare against.
        (Band.of([100.0]), Band.of([150.0]), None),
        # A single run against a band of repeats: still never judged (it was called "+98.3%: different").
        (Band.of([100.0]), Band.of([190.0, 200.0, 210.0]), None),
        # One repeat of a search: its capacity interval is the spread.
        (Band.of([100.0], [(100.0, 110.0)]), Band.of([130.0], [(130.0, 143.0)]), True),
        (Band.of([100.0], [(100.0, 110.0)]), Band.of([108.0], [(108.0, 118.0)]), False),
    ],
)
def test_a_difference_is_called_only_beyond_the_spread(a: Band, b: Band, expected: bool | None) -> None:
    assert differs(a, b) is expected
    assert differs(b, a) is expected
    assert verdict(a, b) == {True: "different", False: "within spread", None: "not judged (single run)"}[expected]


def test_band_always_contains_each_repeats_own_value() -> None:
    # A repeat whose 105% confirmation sustained has its capacity interval above its maximum.
    band = Band.of([2_835_938.0, 3_000_000.0], [(2_977_734.0, 3_093_750.0), (3_000_000.0, 3_150_000.0)])
    assert band.low <= band.median <= band.high
    assert band.low == 2_835_938.0 and band.high == 3_150_000.0
