"""A result file as CSV (``cbdc-bench csv``), and its drift: latency per minute of a long run.

Three tables, for spreadsheets and pandas: the summary (one row: what was offered and achieved,
the percentiles, the load's settings), the per-second series (second, phase, sent, answered, ok,
p50/p99/max latency, worst send lag), and the per-minute latency, merged from the per-second
histograms the result file keeps (never averaged from per-second percentiles).

Drift: a soak run (``--seconds 3600``) is meant to let slow problems (compaction debt, retention,
snapshots, a daily rollover) fall inside the measured window; the p99 of each measured minute
shows them, where the whole run's p99 would hide a slow climb among an hour of good minutes.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from loadgen.generator.histogram import Histogram
from loadgen.results.run import RunResult

#: Minutes shorter than this many seconds (the last, partial one) are left out of the drift.
MIN_MINUTE_S = 30


class MinuteLatency(msgspec.Struct, frozen=True):
    minute: int  # from the start of the measured window
    replies: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def phase_of_second(second: int, warmup_s: float, seconds: float) -> str:
    """Which part of the run second ``second`` (replies received in ``[second, second + 1)``) lies in."""
    if second < warmup_s:
        return "warmup"
    return "measured" if second < warmup_s + seconds else "drain"


def per_minute(result: RunResult) -> list[MinuteLatency]:
    """Latency of the replies received in each whole minute of the measured window (merged histograms)."""
    first = int(-(-result.load.warmup // 1))  # the first whole second of the window
    last = int(result.load.warmup + result.load.seconds)
    out = []
    for minute, start in enumerate(range(first, last, 60)):
        end = min(start + 60, last)
        if end - start < MIN_MINUTE_S and minute:
            break
        merged = Histogram()
        for encoded in result.series.histograms[start:end]:
            if encoded:
                merged.add(Histogram.decode(encoded))
        p = merged.percentiles((50.0, 99.0, 100.0))
        out.append(MinuteLatency(minute, merged.total, p[50.0] / 1e6, p[99.0] / 1e6, p[100.0] / 1e6))
    return out


def drift_line(result: RunResult) -> str | None:
    """One line of p99 per measured minute, for runs of at least two minutes; None otherwise."""
    minutes = [m for m in per_minute(result) if m.replies]
    if len(minutes) < 2:
        return None
    shown = ", ".join(f"{m.p99_ms:.2f}" for m in minutes[:30]) + (" ..." if len(minutes) > 30 else "")
    first, last = minutes[0].p99_ms, minutes[-1].p99_ms
    change = f" (last minute {last / first - 1:+.0%} against the first)" if first > 0 else ""
    worst = max(minutes, key=lambda m: m.p99_ms)
    return f"drift: p99 per minute (ms) {shown}; worst minute {worst.minute} at {worst.p99_ms:.2f} ms{change}"


def _write(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_csv(result: RunResult, out_dir: str | os.PathLike[str], stem: str) -> list[Path]:
    """``STEM-summary.csv``, ``STEM-series.csv`` and ``STEM-minutes.csv`` in ``out_dir``; their paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    summary = msgspec.to_builtins(result.summary)
    load = {f"load_{k}": v for k, v in msgspec.to_builtins(result.load).items() if k != "secrets"}
    row = {"kind": result.kind, "created_utc": result.created_utc, **summary, **load}
    row["external_server"] = result.server.external
    row["server_cpu_s"] = result.server.cpu_s
    row["generator_cpu_s"] = result.generator.cpu_s
    s = result.series
    series_rows = (
        (
            i,
            phase_of_second(i, result.load.warmup, result.load.seconds),
            s.sent[i],
            s.completed[i],
            s.ok[i],
            s.p50_ms[i],
            s.p99_ms[i],
            s.max_ms[i],
            s.max_send_lag_ms[i],
        )
        for i in range(len(s.sent))
    )
    return [
        _write(folder / f"{stem}-summary.csv", list(row), [list(row.values())]),
        _write(
            folder / f"{stem}-series.csv",
            ("second", "phase", "sent", "answered", "ok", "p50_ms", "p99_ms", "max_ms", "max_send_lag_ms"),
            series_rows,
        ),
        _write(
            folder / f"{stem}-minutes.csv",
            ("minute", "replies", "p50_ms", "p99_ms", "max_ms"),
            (msgspec.structs.astuple(m) for m in per_minute(result)),
        ),
    ]
