"""The saturation search on simulated systems whose capacity is known."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.search import RunOutcome, find_max_sustainable


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
