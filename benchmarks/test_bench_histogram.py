"""pytest-benchmark: recording latencies, vectorised, against the hdrhistogram package's per-value loop.

Run: python -m pytest benchmarks -m benchmark --benchmark-enable
"""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from loadgen.generator.histogram import Histogram

pytestmark = pytest.mark.benchmark

N = 1_000  # one reply frame's worth of latencies


@pytest.fixture(scope="module")
def latencies_ns() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.lognormal(np.log(3e6), 0.5, N)).astype(np.int64)  # ~3 ms median


def test_record_frame_vectorised(benchmark, latencies_ns: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    h = Histogram()
    benchmark.extra_info["values_per_round"] = N
    benchmark(h.record, latencies_ns)
    assert h.total > 0


def test_record_frame_hdrhistogram_per_value(benchmark, latencies_ns: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    h = HdrHistogram(1, 3_600 * 10**9, 3)
    values = latencies_ns.tolist()

    def record() -> None:
        for v in values:
            h.record_value(v)

    benchmark.extra_info["values_per_round"] = N
    benchmark(record)
    assert h.get_total_count() > 0


def test_merge_histograms(benchmark, latencies_ns: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    parts = []
    for k in range(8):
        h = Histogram()
        h.record(latencies_ns + k * 1_000)
        parts.append(h)
    merged = benchmark(Histogram.merged, parts)
    assert merged.total == 8 * N
