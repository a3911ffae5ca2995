"""Open-loop schedules: counts, spacing, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.generator.schedule import gateway_schedule

SEED = 7


def _all(arrival: str, rate: float, seconds: float, gateways: int, seed: int = SEED) -> list[np.ndarray]:
    return [
        gateway_schedule(rate_tps=rate, seconds=seconds, gateways=gateways, gateway=g, arrival=arrival, seed=seed)
        for g in range(gateways)
    ]


def test_constant_arrivals_are_evenly_spaced_across_all_gateways() -> None:
    parts = _all("constant", 30_000, 2.0, 3)
    assert sum(len(p) for p in parts) == 60_000
    merged = np.sort(np.concatenate(parts))
    gaps = np.diff(merged)
    assert gaps.min() >= 33_332 and gaps.max() <= 33_334  # 1e9 / 30,000 ns, integer rounding
    for p in parts:
        assert np.all(np.diff(p) > 0)
        assert p[-1] < 2_000_000_000


def test_poisson_counts_and_gaps_are_those_of_the_rate() -> None:
    rate, seconds, gateways = 50_000, 2.0, 4
    parts = _all("poisson", rate, seconds, gateways)
    expected = rate * seconds
    total = sum(len(p) for p in parts)
    print(f"seed {SEED}: {total} arrivals, expected {expected}")
    assert abs(total - expected) < 5 * np.sqrt(expected)
    merged = np.sort(np.concatenate(parts))
    gaps = np.diff(merged).astype(np.float64)
    assert abs(gaps.mean() - 1e9 / rate) < 0.02 * 1e9 / rate
    # Exponential gaps: the coefficient of variation is 1 (a constant stream has 0).
    assert 0.95 < gaps.std() / gaps.mean() < 1.05
    assert all(np.all(np.diff(p) >= 0) and p[-1] < seconds * 1e9 for p in parts)


def test_poisson_schedules_are_reproducible_from_the_seed() -> None:
    a = _all("poisson", 10_000, 1.0, 2, seed=11)
    b = _all("poisson", 10_000, 1.0, 2, seed=11)
    c = _all("poisson", 10_000, 1.0, 2, seed=12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # gateways draw independent streams


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_tps": 0}, "rate and seconds"),
        ({"seconds": -1}, "rate and seconds"),
        ({"gateway": 3}, "outside"),
        ({"arrival": "bursty"}, "bursty"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "rate_tps": 1000,
        "seconds": 1.0,
        "gateways": 3,
        "gateway": 0,
        "arrival": "constant",
        "seed": 1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        gateway_schedule(**args)  # type: ignore[arg-type]
