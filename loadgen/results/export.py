"""A result file as CSV (``cbdc-bench csv``), and its drift line (``loadgen.results.drift``).

Three tables, for spreadsheets and pandas: the summary (one row: what was offered and achieved,
the percentiles, the load's settings), the per-second series (second, phase, sent, answered, ok,
p50/p99/max latency, worst send lag), and the per-minute latency, merged from the per-second
histograms the result file keeps (never averaged from per-second percentiles).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from loadgen.results.drift import DRIFT_FROM_S, MinuteLatency, drift_text, minutes_of_series
from loadgen.results.run import RunResult


def phase_of_second(second: int, warmup_s: float, seconds: float) -> str:
    """Which part of the run second ``second`` (replies received in ``[second, second + 1)``) lies in."""
    if second < warmup_s:
        return "warmup"
    return "measured" if second < warmup_s + seconds else "drain"


def per_minute(result: RunResult) -> list[MinuteLatency]:
    """Latency of each whole minute of the measured window: as stored (long runs), else from the histograms."""
    if result.drift is not None:
        return list(result.drift)
    return minutes_of_series(result.series.histograms, result.load.warmup, result.load.seconds)


def long_run_minutes(result: RunResult) -> list[MinuteLatency] | None:
    """The minutes of a run measured ``DRIFT_FROM_S`` or longer (stored, or recomputed for older files), else None."""
    return per_minute(result) if result.drift is not None or result.load.seconds >= DRIFT_FROM_S else None


def drift_line(result: RunResult) -> str | None:
    """The ``drift:`` line of a result (p99 per measured minute), None for runs under two minutes."""
    return drift_text(per_minute(result))


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
