"""What the plots draw: elbow curves sorted by load with bands and marked failures; readable time series."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.markers import MarkerStyle

from loadgen.report.data import HEADLINE_TPS, RunPoint, build
from loadgen.report.elbow import elbow_levels
from loadgen.report.plots import ELBOW_ZOOM_TPS, FAILED_MARKER, elbow_figure, timeseries_figure

FIXTURES = Path(__file__).parent / "fixtures" / "results"


def _point(profile: str, rate: float, p99_ms: float, sustained: bool = True) -> RunPoint:
    return RunPoint(profile, rate, p99_ms, sustained, "verdict: sustained" if sustained else "verdict: not sustained")


#: Baseline's runs in the order a search with two repeats visits them (not sorted by rate).
SEARCH_ORDER = [
    _point("baseline", 2_400_000, 4.0),
    _point("baseline", 300_000, 6.0),
    _point("baseline", 4_800_000, 6.5),
    _point("baseline", 9_600_000, 32.0, sustained=False),
    _point("baseline", 300_000, 8.0),  # the second repeat at the same rate
    _point("baseline", 7_200_000, 14.0, sustained=False),
    _point("baseline", 7_300_000, 18.0, sustained=False),  # within 5% of 7.2M: the same level
]


def test_levels_are_sorted_by_load_with_the_median_and_range_of_their_runs() -> None:
    levels = elbow_levels(SEARCH_ORDER)
    x = [lv.offered_tps for lv in levels]
    assert x == sorted(x) and len(x) == 5
    at_300k = levels[0]
    assert (at_300k.runs, at_300k.p99_ms, at_300k.p99_low_ms, at_300k.p99_high_ms) == (2, 7.0, 6.0, 8.0)
    merged = levels[3]
    assert merged.runs == 2 and merged.failed_runs == 2 and merged.offered_tps == pytest.approx(7_250_000)
    assert (merged.p99_low_ms, merged.p99_high_ms) == (14.0, 18.0)
    single = levels[1]
    assert single.runs == 1 and single.p99_low_ms == single.p99_high_ms == single.p99_ms == 4.0


def _by_gid(ax: Axes, gid: str) -> list[object]:
    return [a for a in ax.get_children() if a.get_gid() == gid]


def _marker_vertices(marker: str) -> np.ndarray:
    style = MarkerStyle(marker)
    return style.get_path().transformed(style.get_transform()).vertices


@pytest.fixture(scope="module")
def report_data():  # type: ignore[no-untyped-def]
    data, runs, _ = build([FIXTURES])
    return data, runs


def test_elbow_draws_sorted_curves_bands_with_repeats_and_marked_failures(report_data) -> None:  # type: ignore[no-untyped-def]
    data, _ = report_data
    points = [*SEARCH_ORDER, _point("full", 900_000, 9.0), _point("full", 300_000, 7.0)]
    fig = elbow_figure(msgspec.structs.replace(data, points=points))
    full_range, zoom = fig.axes[0], fig.axes[1]
    for ax in (full_range, zoom):
        (curve,) = _by_gid(ax, "curve:baseline")
        x = list(curve.get_xdata())  # type: ignore[attr-defined]
        assert x == sorted(x) and len(x) == 5
        assert len(_by_gid(ax, "band:baseline")) == 1  # repeats at 300k: a band
        assert isinstance(_by_gid(ax, "band:baseline")[0], PolyCollection)
        assert _by_gid(ax, "band:full") == []  # single runs only: no band
        (failed,) = _by_gid(ax, "failed:baseline")
        assert isinstance(failed, PathCollection)
        offsets = sorted(map(tuple, failed.get_offsets()))
        assert offsets == sorted((pt.offered_tps, pt.p99_ms) for pt in SEARCH_ORDER if not pt.sustained)
        assert np.allclose(failed.get_paths()[0].vertices, _marker_vertices(FAILED_MARKER))
    # The zoom panel is the region around 300,000/s, on a linear scale, with the SLO in view.
    assert zoom.get_xlim() == ELBOW_ZOOM_TPS and ELBOW_ZOOM_TPS[0] < HEADLINE_TPS < ELBOW_ZOOM_TPS[1]
    assert zoom.get_yscale() == "linear" and zoom.get_ylim()[1] > data.slo_p99_ms
    assert full_range.get_xlim()[1] >= 9_600_000
    # The legend names the failure marker.
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    i = labels.index("one run, NOT sustained")
    assert legend.legend_handles[i].get_marker() == FAILED_MARKER  # type: ignore[union-attr]
    assert {"baseline", "full"} <= set(labels)


def test_timeseries_lines_are_inside_a_scale_that_shows_them(report_data) -> None:  # type: ignore[no-untyped-def]
    """Every throughput line once lay on the top border of a 0 to 300k scale."""
    data, runs = report_data
    fig: Figure = timeseries_figure(data, runs)
    top = fig.axes[0]
    low, high = top.get_ylim()
    lines = [a for a in top.get_lines() if str(a.get_gid()).startswith("share:")]
    assert {str(line.get_gid()) for line in lines} == {"share:baseline", "share:full"}
    for line in lines:
        y = np.asarray(line.get_ydata(), dtype=float)
        assert low < y.min() and y.max() < high
        # Headroom: no line within 5% of the panel's height of either border.
        assert (high - y.max()) / (high - low) > 0.05 and (y.min() - low) / (high - low) > 0.05
    # The offered rate (100%) and the sustained threshold are in view, and the scale is not 0-based.
    assert low < 100 * data.min_achieved_ratio < 100 < high and low > 0
