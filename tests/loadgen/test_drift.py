"""Drift stored in the result file: built from the run, read back, recomputed for older files, reported."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from loadgen.generator.gateway import LoadConfig
from loadgen.report.data import build
from loadgen.report.markdown import to_markdown
from loadgen.results.drift import DRIFT_FROM_S, MinuteLatency, minutes_of_series
from loadgen.results.environment import collect
from loadgen.results.export import drift_line, per_minute
from loadgen.results.run import RunResult, build_result, load, loads, save

MS = 1_000_000
PER_SECOND = 20
FIXTURES = Path(__file__).parent / "fixtures" / "results"


def _result(seconds: float) -> RunResult:
    """A run of ``seconds`` measured after 1 s of warm-up: latency (k + 1) ms in measured minute k."""
    config = LoadConfig(rate_tps=PER_SECOND, seconds=seconds, warmup=1.0, operators=1, drain=1.0)
    m = config.new_measurement()
    total = int((1 + seconds) * PER_SECOND)
    m.scheduled, m.scheduled_measured = total, int(seconds * PER_SECOND)
    for second in range(int(1 + seconds)):
        frame = (second * 1_000 + np.arange(PER_SECOND, dtype=np.int64) * (1_000 // PER_SECOND)) * MS
        minute = max(second - 1, 0) // 60
        for at in frame:  # one payment per frame: each answered (minute + 1) ms after its schedule
            m.on_sent(frame[:1] * 0 + at, int(at))
            m.on_results(frame[:1] * 0 + at, np.zeros(1, dtype=np.uint8), int(at) + (minute + 1) * MS)
    welcome = {"accounts": 1_000, "profile": "baseline"}
    return build_result(kind="run", m=m, config=config, environment=collect(), welcome=welcome, failures=[])


def _same(a: list[MinuteLatency] | None, b: list[MinuteLatency] | None) -> None:
    """Equal minutes, latencies within the histograms' resolution (3 significant digits).

    The stored minutes come from the run's histograms, which know each second's exact maximum;
    the file keeps HdrHistogram's encoding, which keeps only its bucket.
    """
    assert a is not None and b is not None and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.minute, x.replies) == (y.minute, y.replies)
        assert [x.p50_ms, x.p99_ms, x.max_ms] == pytest.approx([y.p50_ms, y.p99_ms, y.max_ms], rel=1e-3)


@pytest.fixture(scope="module")
def long_run() -> RunResult:
    return _result(150.0)  # minutes of 60, 60 and 30 s


def test_a_long_run_stores_its_drift_and_reads_it_back(long_run: RunResult, tmp_path: Path) -> None:
    assert long_run.load.seconds >= DRIFT_FROM_S and long_run.drift is not None
    assert [m.minute for m in long_run.drift] == [0, 1, 2]
    assert [m.replies for m in long_run.drift] == [60 * PER_SECOND, 60 * PER_SECOND, 30 * PER_SECOND]
    assert [m.p99_ms for m in long_run.drift] == pytest.approx([1.0, 2.0, 3.0], abs=0.03)
    back = load(save(long_run, tmp_path))
    assert back.drift == long_run.drift
    # What is stored is what the per-second histograms in the same file give.
    _same(back.drift, minutes_of_series(back.series.histograms, back.load.warmup, back.load.seconds))
    line = drift_line(back)
    assert line is not None and "worst minute 2" in line and "+200%" in line


def test_a_short_run_stores_no_drift() -> None:
    short = _result(5.0)
    assert short.drift is None
    assert drift_line(short) is None and len(per_minute(short)) == 1  # the CSV still gets its one minute


def test_a_file_from_before_drift_was_stored_loads_and_gets_it_from_its_histograms(long_run: RunResult) -> None:
    doc = json.loads(msgspec.json.encode(long_run))
    del doc["drift"]
    older = loads(json.dumps(doc).encode())
    assert older.drift is None
    _same(per_minute(older), long_run.drift)
    assert drift_line(older) == drift_line(long_run)
    assert load(next(FIXTURES.glob("*baseline*"))).drift is None  # a committed version-1 file


def test_the_report_shows_the_drift_of_long_runs_only(long_run: RunResult, tmp_path: Path) -> None:
    save(long_run, tmp_path / "long")
    data, _, _ = build([tmp_path / "long"])
    (row,) = data.drift
    assert row.profile == "baseline" and row.worst_minute == 2
    assert row.p99_ms_by_minute == pytest.approx([1.0, 2.0, 3.0], abs=0.03)
    assert row.last_vs_first == pytest.approx(2.0, abs=0.05)
    md = to_markdown(data)
    assert "## Drift of long runs" in md and "+200%" in md and "2: 3.0" in md
    short, _, _ = build([FIXTURES])
    assert short.drift == [] and "Drift of long runs" not in to_markdown(short)
