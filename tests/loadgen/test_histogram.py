"""The numpy-binned histogram against the reference ``hdrhistogram`` package."""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from loadgen.generator.histogram import DEFAULT_HIGHEST_NS, Histogram, Layout

SEED = 4_242
PERCENTILES = (0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0)


def _latencies(seed: int, n: int = 50_000) -> np.ndarray:
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    # Log-normal around a millisecond with a heavy tail, plus the layout's edge values.
    values = rng.lognormal(np.log(1e6), 1.8, n).astype(np.int64)
    edges = [0, 1, 2, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 10**6, 2**31, DEFAULT_HIGHEST_NS]
    return np.concatenate([values.clip(0, DEFAULT_HIGHEST_NS), np.array(edges, dtype=np.int64)])


def _reference(values: np.ndarray) -> HdrHistogram:
    ref = HdrHistogram(1, DEFAULT_HIGHEST_NS, 3)
    for v in values.tolist():
        ref.record_value(v)
    return ref


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_counts_are_bucket_for_bucket_those_of_hdrhistogram(seed: int) -> None:
    values = _latencies(seed)
    h = Histogram()
    h.record(values)
    ref = _reference(values)
    assert h.layout.counts_len == ref.counts_len
    np.testing.assert_array_equal(h.counts, np.ctypeslib.as_array(ref.counts))
    assert h.total == ref.get_total_count()


def test_percentiles_match_hdrhistogram_within_resolution() -> None:
    values = _latencies(SEED)
    h = Histogram()
    for frame in np.array_split(values, 97):  # recorded frame by frame, as the gateways do
        h.record(frame)
    ref = _reference(values)
    ours = h.percentiles(PERCENTILES)
    for p in PERCENTILES[1:-1]:
        theirs = ref.get_value_at_percentile(p)
        # Same bucket; ours is capped at the exact max where HdrHistogram reports the bucket top.
        assert ref.values_are_equivalent(ours[p], theirs), (p, ours[p], theirs)
    assert ours[100.0] == int(values.max())
    assert ours[0.0] == int(values.min())


def test_percentiles_are_within_a_thousandth_of_the_exact_ones() -> None:
    values = _latencies(SEED + 2)[:-13]  # no edge values: a plain sample
    h = Histogram()
    h.record(values)
    ordered = np.sort(values)
    for p in (50.0, 90.0, 99.0, 99.9):
        exact = int(ordered[max(int(p * len(values) / 100 + 0.5), 1) - 1])  # HdrHistogram's rank rule
        assert abs(h.value_at(p) - exact) <= exact * 1e-3 + 1, p


def test_encoding_is_readable_by_hdrhistogram_and_round_trips() -> None:
    values = _latencies(SEED)
    h = Histogram()
    h.record(values)
    encoded = h.encode()
    theirs = HdrHistogram.decode(encoded)
    assert theirs.get_total_count() == h.total
    for p in PERCENTILES[1:-1]:
        assert theirs.values_are_equivalent(theirs.get_value_at_percentile(p), h.value_at(p))
    back = Histogram.decode(encoded, max_ns=h.max_ns)
    np.testing.assert_array_equal(back.counts, h.counts)
    assert back.percentiles(PERCENTILES) == h.percentiles(PERCENTILES)


def test_import_from_an_hdrhistogram_recorded_elsewhere() -> None:
    values = _latencies(SEED + 3, 5_000)
    ref = _reference(values)
    h = Histogram.from_hdr(ref)
    assert h.total == ref.get_total_count()
    assert ref.values_are_equivalent(h.value_at(99.0), ref.get_value_at_percentile(99.0))


def test_merging_adds_distributions_never_averages_percentiles() -> None:
    rng = np.random.default_rng(SEED)
    fast = rng.integers(1_000, 2_000, 9_900)  # 99% fast
    slow = rng.integers(1_000_000, 2_000_000, 100)  # 1% slow, all in one generator
    a, b = Histogram(), Histogram()
    a.record(fast)
    b.record(slow)
    merged = Histogram.merged([a, b])
    both = Histogram()
    both.record(np.concatenate([fast, slow]))
    np.testing.assert_array_equal(merged.counts, both.counts)
    assert merged.percentiles() == both.percentiles()
    # The merged p99.5 sits in the slow tail; the average of the two p99.5s would not be a latency
    # that any request had.
    assert merged.value_at(99.5) >= 1_000_000
    assert merged.count_above(10_000) == 100


def test_values_beyond_the_range_are_clamped_and_counted() -> None:
    h = Histogram(Layout(highest=10**6))
    h.record(np.array([5, 2 * 10**6, 3 * 10**6, -7], dtype=np.int64))
    assert h.total == 4
    assert h.saturated == 2
    assert h.max_ns == 3 * 10**6
    assert h.value_at(0.0) == 0


def test_histograms_with_different_layouts_refuse_to_merge() -> None:
    with pytest.raises(ValueError, match="different layouts"):
        Histogram().add(Histogram(Layout(significant_figures=2)))
