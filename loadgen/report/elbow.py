"""The elbow curve of one profile: p99 against offered load, one point per load level.

A search visits rates in bisection order and each repeat visits slightly different ones, so
joining runs in file order draws a zig-zag, and grouping by exact rate leaves most levels with a
single run. Runs whose offered rates lie within ``LEVEL_TOLERANCE`` of the lowest rate of their
level are one level: its x is the median offered rate, its y the median p99, its band the range
of the runs' p99s (so a level with repeats shows their spread; a single run has no band). Levels
are sorted by offered rate, so the curve reads left to right as the load grows.

The tolerance is half of the default search precision (10%): the last bisection steps of one
search stay separate levels, while repeats at the same rate, and a repeat's trial a few percent
from another's, are merged.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import numpy as np

from loadgen.report.data import RunPoint

#: Runs within this relative distance of the lowest offered rate of a level form that level.
LEVEL_TOLERANCE = 0.05


class ElbowLevel(msgspec.Struct, frozen=True):
    """One load level of one profile's elbow curve (what the plot draws and report.json could hold)."""

    offered_tps: float  # median offered rate of the runs in the level
    p99_ms: float  # median of the runs' p99s
    p99_low_ms: float  # lowest p99 of the level's runs: the band's bottom
    p99_high_ms: float  # highest: the band's top
    runs: int
    failed_runs: int  # runs not sustained by their own verdict


def elbow_levels(points: Iterable[RunPoint], *, tolerance: float = LEVEL_TOLERANCE) -> list[ElbowLevel]:
    """The levels of ``points`` (one profile's runs), sorted by offered rate."""
    ordered = sorted(points, key=lambda pt: pt.offered_tps)
    groups: list[list[RunPoint]] = []
    for pt in ordered:
        if groups and pt.offered_tps <= groups[-1][0].offered_tps * (1 + tolerance):
            groups[-1].append(pt)
        else:
            groups.append([pt])
    levels = []
    for group in groups:
        p99 = np.array([pt.p99_ms for pt in group])
        levels.append(
            ElbowLevel(
                offered_tps=float(np.median([pt.offered_tps for pt in group])),
                p99_ms=float(np.median(p99)),
                p99_low_ms=float(p99.min()),
                p99_high_ms=float(p99.max()),
                runs=len(group),
                failed_runs=sum(not pt.sustained for pt in group),
            )
        )
    return levels
