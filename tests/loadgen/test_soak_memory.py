"""Soak runs: per-second histograms are packed once their second is over, so memory stays bounded
and nothing recorded changes."""

from __future__ import annotations

import numpy as np

from engine.codes import ResultCode
from loadgen.generator.gateway import LoadConfig
from loadgen.generator.histogram import Histogram


def test_an_hour_of_seconds_keeps_the_same_histograms_in_little_memory(rng: np.random.Generator) -> None:
    seconds = 3600
    m = LoadConfig(rate_tps=1000, seconds=seconds, warmup=0, drain=0, operators=1).new_measurement()
    checked = (0, 1, 1800, seconds - 2, seconds - 1)
    expected: dict[int, Histogram] = {}
    for s in range(seconds):
        scheduled = np.sort(rng.integers(s * 10**9, s * 10**9 + 5 * 10**8, 50)).astype(np.int64)
        recv = s * 10**9 + 6 * 10**8
        m.on_results(scheduled, np.zeros(50, dtype=np.uint8) + ResultCode.OK, recv)
        if s in checked:
            expected[s] = Histogram(m.layout)
            expected[s].record(recv - scheduled)
    dense_bytes = Histogram(m.layout).counts.nbytes
    assert m.per_second.nbytes() < 100 * dense_bytes  # dense: 3,600 x 270 KB, about 1 GB
    for s in checked:
        got = m.per_second[s]
        assert got is not None
        assert np.array_equal(got.counts, expected[s].counts)
        assert (got.total, got.min_ns, got.max_ns) == (expected[s].total, expected[s].min_ns, expected[s].max_ns)
    assert sum(h.total for h in m.per_second if h is not None) == 50 * seconds == m.results_total


def test_merging_processes_adds_sealed_seconds() -> None:
    config = LoadConfig(rate_tps=1000, seconds=5, warmup=0, drain=0, operators=2)
    a, b = config.new_measurement(), config.new_measurement()
    for m, lat in ((a, 1_000_000), (b, 3_000_000)):
        for s in range(5):
            scheduled = np.full(10, s * 10**9, dtype=np.int64)
            m.on_results(scheduled, np.zeros(10, dtype=np.uint8), s * 10**9 + lat)
    a.merge(b)
    for s in range(5):
        h = a.per_second[s]
        assert h is not None and h.total == 20
        assert h.value_at(50) < 1_100_000 and h.max_ns == 3_000_000
