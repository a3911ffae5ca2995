"""Drift: the latency of each measured minute of a long run, from its per-second histograms.

A soak run (``--seconds 3600``) is meant to let slow problems (compaction debt, retention,
snapshots, a daily rollover) fall inside the measured window; the p99 of each measured minute
shows them, where the whole run's p99 would hide a slow climb among an hour of good minutes.
Each minute's percentiles come from the merged histograms of its seconds, never from averaging
per-second percentiles.

Runs measured for ``DRIFT_FROM_S`` or longer store their minutes in the result file
(``RunResult.drift``, issue 20); for older files and shorter runs the minutes are recomputed
from the per-second histograms the file keeps anyway (``minutes_of_series``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import msgspec

from loadgen.generator.histogram import Histogram

#: Runs measured at least this long store and print their p99 per minute.
DRIFT_FROM_S = 120
#: Minutes shorter than this many seconds (the last, partial one) are left out of the drift.
MIN_MINUTE_S = 30


class MinuteLatency(msgspec.Struct, frozen=True):
    """The replies received in one minute of the measured window, and their latency from schedule."""

    minute: int  # from the start of the measured window
    replies: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class PerSecond(Protocol):
    """Histograms by second (a list, or the generator's packed ``PerSecondHistograms``)."""

    def __len__(self) -> int: ...
    def __getitem__(self, second: int, /) -> Histogram | None: ...


def minutes(per_second: PerSecond, warmup_s: float, seconds: float) -> list[MinuteLatency]:
    """Latency of each whole minute of the window ``[warmup_s, warmup_s + seconds)``; ``per_second[i]``: second i."""
    return _minutes(
        lambda start, end: (per_second[i] for i in range(start, min(end, len(per_second)))), warmup_s, seconds
    )


def minutes_of_series(encoded: Sequence[str | None], warmup_s: float, seconds: float) -> list[MinuteLatency]:
    """``minutes`` of a result file's per-second histograms (HdrHistogram V2), decoded a minute at a time.

    Decoding all of an hour's seconds at once would hold 3,600 dense histograms.
    """
    return _minutes(
        lambda start, end: (None if e is None else Histogram.decode(e) for e in encoded[start:end]), warmup_s, seconds
    )


def _minutes(
    seconds_of: Callable[[int, int], Iterable[Histogram | None]], warmup_s: float, seconds: float
) -> list[MinuteLatency]:
    first = int(-(-warmup_s // 1))  # the first whole second of the window
    last = int(warmup_s + seconds)
    out = []
    for minute, start in enumerate(range(first, last, 60)):
        end = min(start + 60, last)
        if end - start < MIN_MINUTE_S and minute:
            break
        merged = Histogram()
        for h in seconds_of(start, end):
            if h is not None:
                merged.add(h)
        p = merged.percentiles((50.0, 99.0, 100.0))
        out.append(MinuteLatency(minute, merged.total, p[50.0] / 1e6, p[99.0] / 1e6, p[100.0] / 1e6))
    return out


def stored_drift(per_second: PerSecond, warmup_s: float, seconds: float) -> list[MinuteLatency] | None:
    """What a result file stores: the minutes of a run measured ``DRIFT_FROM_S`` or longer, else None."""
    return minutes(per_second, warmup_s, seconds) if seconds >= DRIFT_FROM_S else None


def drift_text(measured: Iterable[MinuteLatency]) -> str | None:
    """One line of p99 per measured minute (at least two minutes with replies); None otherwise."""
    shown_minutes = [m for m in measured if m.replies]
    if len(shown_minutes) < 2:
        return None
    shown = ", ".join(f"{m.p99_ms:.2f}" for m in shown_minutes[:30]) + (" ..." if len(shown_minutes) > 30 else "")
    first, last = shown_minutes[0].p99_ms, shown_minutes[-1].p99_ms
    change = f" (last minute {last / first - 1:+.0%} against the first)" if first > 0 else ""
    worst = max(shown_minutes, key=lambda m: m.p99_ms)
    return f"drift: p99 per minute (ms) {shown}; worst minute {worst.minute} at {worst.p99_ms:.2f} ms{change}"
