"""Live progress: the line's figures come from the generator's counters; quiet under --json or off a terminal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import loadgen.generator.progress as progress_module
from engine.codes import ResultCode
from engine.server import ServerConfig, ServerThread
from loadgen.cli.main import main
from loadgen.generator.gateway import LoadConfig
from loadgen.generator.progress import LoadProgress, phase_of, progress_console


def _terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=200), buffer


def test_line_reads_the_last_complete_second() -> None:
    config = LoadConfig(rate_tps=1000, seconds=3, warmup=1, operators=1)
    m = config.new_measurement()
    live = LoadProgress(_terminal()[0], rate_tps=1000, warmup_s=1, seconds=3)
    assert "connecting" in live.line(0)
    live.started(0)
    live.watch(m)
    scheduled = np.arange(1_000_000_000, 1_000_000_000 + 400 * 1_000_000, 1_000_000, dtype=np.int64)
    m.on_sent(scheduled, 1_400_000_000)
    codes = np.full(400, ResultCode.OK, dtype=np.uint8)
    codes[:30] = ResultCode.OVERLOADED
    m.on_results(scheduled, codes, 1_500_000_000)  # latencies 100..499 ms
    line = live.line(2_100_000_000)  # second 1 is complete
    assert "measuring" in line and "offered 1,000/s" in line
    assert "sent 400/s" in line and "settled 370/s" in line and "shed or hook error 30/s" in line
    p99_ms = float(line.split("p99 ")[1].split(" ms")[0])
    assert p99_ms == pytest.approx(496, rel=0.01)  # HdrHistogram resolution
    assert "sent 0/s" in live.line(3_100_000_000)  # second 2: nothing happened


def test_phases() -> None:
    assert [phase_of(t, 1, 2) for t in (0.5, 1.5, 3.5)] == ["warm-up", "measuring", "draining"]


def test_only_a_terminal_without_json_gets_progress() -> None:
    terminal, _ = _terminal()
    assert progress_console(as_json=False, console=terminal) is terminal
    assert progress_console(as_json=True, console=terminal) is None
    assert progress_console(as_json=False, console=Console(file=io.StringIO())) is None


def test_load_draws_progress_on_a_terminal_and_nothing_under_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    terminal, drawn = _terminal()
    monkeypatch.setattr(progress_module, "Console", lambda **_: terminal)  # stderr "is" a terminal
    with ServerThread(ServerConfig(port=0, accounts=2000, echo=True)) as st:
        argv = [
            "load",
            "--target",
            f"127.0.0.1:{st.address[1]}",
            "--rate",
            "2000",
            "--seconds",
            "1.2",
            "--warmup",
            "0.2",
        ]
        argv += ["--drain", "1", "--out", str(tmp_path)]
        main([*argv, "--json"])
        assert drawn.getvalue() == ""
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["offered_tps"] == 2000
        main(argv)
    text = drawn.getvalue()
    assert "offered 2,000/s" in text and "settled" in text and "p99" in text
