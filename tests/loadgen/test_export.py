"""``cbdc-bench csv`` and the drift of a long run: read back what was written, against the result file."""

from __future__ import annotations

import csv
from pathlib import Path

import msgspec
import numpy as np
import pytest

from loadgen.cli.main import main
from loadgen.cli.output import format_summary
from loadgen.generator.histogram import Histogram
from loadgen.results.export import drift_line, per_minute
from loadgen.results.run import RunResult, load

FIXTURE = Path(__file__).parent / "fixtures" / "results" / "20261122T090419Z-run-baseline-300000tps.json"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_tables_hold_the_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = load(FIXTURE)
    assert main(["csv", str(FIXTURE), "--out", str(tmp_path)]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert [p.name.rsplit("-", 1)[1] for p in written] == ["summary.csv", "series.csv", "minutes.csv"]
    (summary,) = _rows(written[0])
    assert float(summary["achieved_tps"]) == result.summary.achieved_tps
    assert summary["profile"] == "baseline" and float(summary["load_rate_tps"]) == result.load.rate_tps
    series = _rows(written[1])
    assert len(series) == len(result.series.sent)
    assert [int(r["sent"]) for r in series] == result.series.sent
    assert {r["phase"] for r in series} == {"warmup", "measured", "drain"}
    warmup = int(result.load.warmup)
    assert [r["phase"] for r in series[warmup - 1 : warmup + 1]] == ["warmup", "measured"]
    (minute,) = _rows(written[2])  # a 30 s window: one (partial) minute
    window = slice(warmup, warmup + int(result.load.seconds))
    assert int(minute["replies"]) == sum(result.series.completed[window])
    assert min(result.series.p99_ms[window]) <= float(minute["p99_ms"]) <= max(result.series.p99_ms[window])


def _long_run(seconds: int) -> RunResult:
    """The fixture stretched to ``seconds`` measured, latency 1 ms in the first minute, 2 ms in the second..."""
    base = load(FIXTURE)
    warmup = int(base.load.warmup)
    histograms = []
    for i in range(warmup + seconds + 1):
        h = Histogram()
        h.record(np.full(100, (1 + max(i - warmup, 0) // 60) * 1_000_000, dtype=np.int64))
        histograms.append(h.encode())
    n = len(histograms)
    series = msgspec.structs.replace(
        base.series,
        histograms=histograms,
        sent=[100] * n,
        completed=[100] * n,
        ok=[100] * n,
        p50_ms=[0.0] * n,
        p99_ms=[0.0] * n,
        max_ms=[0.0] * n,
        max_send_lag_ms=[0.0] * n,
    )
    return msgspec.structs.replace(base, series=series, load=msgspec.structs.replace(base.load, seconds=seconds))


def test_drift_is_the_p99_of_each_minute() -> None:
    minutes = per_minute(_long_run(150))  # 60 + 60 + 30 s
    assert [m.minute for m in minutes] == [0, 1, 2] and [m.replies for m in minutes] == [6000, 6000, 3000]
    assert [m.p99_ms for m in minutes] == pytest.approx([1.0, 2.0, 3.0], rel=1e-3)
    line = drift_line(_long_run(150))
    assert line is not None and "worst minute 2" in line and "+200%" in line
    assert drift_line(load(FIXTURE)) is None  # one minute: no drift to show
    assert "drift: p99 per minute" in format_summary(_long_run(150))
