"""The ingest benchmark's judgement of a compactor's debt over a run (``benchmarks.trove_ingest_ratio``)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.trove_ingest_ratio import debt_trend, ingest_second_half_s, owed_spans


def _series(debts: list[int], rows_per_sample: int, idle_after: int) -> list[dict[str, Any]]:
    """Samples 5 s apart: rows grow for ``idle_after`` samples, then stop (the drain)."""
    out = []
    for i, debt in enumerate(debts):
        rows = rows_per_sample * min(i, idle_after)
        out.append({"t_s": 5.0 * i, "rows": rows, "runs": 1, "merge_debt_rows": debt, "merge_debt_merges": 1})
    return out


def test_a_compactor_that_falls_behind_shows_a_slope_of_the_rate() -> None:
    # Debt grows 1M rows every 5 s while 2.5M rows arrive: 200,000 rows/s of a 500,000/s rate.
    series = _series([1_000_000 * i for i in range(12)], 2_500_000, idle_after=10)
    trend = debt_trend(series, 500_000, ingest_second_half_s(series))
    assert trend["slope_rows_per_s"] == 200_000 and trend["slope_fraction_of_rate"] == pytest.approx(0.4)
    assert trend["debt_max_rows"] == 11_000_000 and trend["debt_end_rows"] == 11_000_000


def test_a_compactor_that_keeps_up_has_a_flat_debt_and_the_drain_is_left_out() -> None:
    # A merge's worth of debt comes and goes during the ingest; after it (samples 10-13: no rows
    # arrive) the compactor pays the rest off, which must not read as a falling trend.
    debts = [0, 4, 8, 0, 4, 8, 0, 4, 8, 0, 4, 0, 0, 0]
    series = _series([d * 1_000_000 for d in debts], 2_500_000, idle_after=10)
    start = ingest_second_half_s(series)
    assert start == pytest.approx((5.0 + 50.0) / 2)  # from the first sample with rows to the last new rows
    trend = debt_trend(series, 500_000, start)
    assert trend["slope_samples"] == 5  # t = 30..50 s: the idle tail is not in it
    assert abs(trend["slope_fraction_of_rate"]) < 0.2


def test_no_samples_no_trend() -> None:
    assert debt_trend([], 500_000, 0.0) == {}
    assert ingest_second_half_s([]) == 0.0


def test_owed_spans_say_how_long_each_merge_was_owed() -> None:
    debts = [0, 0, 3, 3, 0, 0, 5, 5, 5]
    series = _series([d * 1_000_000 for d in debts], 1_000_000, idle_after=20)
    spans = owed_spans(series)
    assert [(s["from_s"], s["to_s"], s["seconds"], s["max_rows"]) for s in spans] == [
        (10.0, 20.0, 10.0, 3_000_000),
        (30.0, None, 10.0, 5_000_000),  # still owed at the last sample (t = 40 s)
    ]
    trend = debt_trend(series, 500_000, 0.0)
    assert trend["debt_max_merges"] == 1 and trend["owed_spans"] == spans
