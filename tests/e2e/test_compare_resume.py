"""``compare --resume``: an interrupted comparison goes on from its completed phases, which are read
back, not measured again, and ends as an uninterrupted one would. ``compare --target --reuse-server``:
every trial on one running server, and the summary says so."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from loadgen.cli.main import main
from loadgen.harness.compare import Session, run_compare
from loadgen.harness.server import running_server, server_arguments
from loadgen.results.compare import Plan, loads_summary
from loadgen.results.run import RunResult, load

pytestmark = pytest.mark.slow

SCENARIO = """
[profiles]
baseline = []

# Resuming is under test, not whether this shared machine meets 20 ms.
[compare]
slo_p99_ms = 2000.0
common_rates_tps = [4_000]
start_tps = 8_000
min_tps = 4_000
max_tps = 8_000
"""
PLAN = Plan(
    mode="test",
    accounts=5_000,
    repeats=1,
    precision=0.1,
    confirm_repeats=1,
    search_warmup_s=0.2,
    search_seconds=0.5,
    equal_warmup_s=0.2,
    equal_seconds=0.5,
    drain_s=1.0,
)


def test_an_interrupted_compare_resumes_from_its_completed_phases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    measured: list[float] = []
    real_measure = Session._measure

    def measure_then_stop(self: Session, rate_tps: float, **kw: Any) -> RunResult:
        if len(measured) == 1:
            raise KeyboardInterrupt("interrupted by the test")
        measured.append(rate_tps)
        return real_measure(self, rate_tps, **kw)

    monkeypatch.setattr(Session, "_measure", measure_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_compare(str(scenario), plan=PLAN, seed=9, out=out, console=Console(file=io.StringIO()))
    assert not (out / "compare.json").exists() and len(measured) == 1
    (first,) = [p.name for p in (out / "runs").glob("*.json")]

    resumed: list[float] = []

    def count(self: Session, rate_tps: float, **kw: Any) -> RunResult:
        resumed.append(rate_tps)
        return real_measure(self, rate_tps, **kw)

    monkeypatch.setattr(Session, "_measure", count)
    assert main(["compare", "--resume", str(out), "--no-report"]) == 0
    summary = loads_summary((out / "compare.json").read_bytes())
    assert len(summary.runs) == 1 + len(resumed) and resumed  # the first was read back
    assert [r.offered_tps for r in summary.runs[:1]] == measured
    assert Path(summary.runs[0].file).name == first
    assert summary.seed == 9 and summary.plan == PLAN
    assert summary.searches[0].result.max_sustainable_tps == 8_000  # the ceiling, under this SLO
    assert {r.stage for r in summary.runs} == {"search", "equal-load"}


def test_compare_reuses_a_running_server_only_when_asked_and_says_so(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    with running_server(server_arguments(profile="baseline", accounts=3000, seed=2, operators=2), accounts=3000) as s:
        summary, path = run_compare(
            str(scenario),
            plan=PLAN,
            seed=4,
            out=tmp_path / "out",
            console=Console(file=io.StringIO()),
            make_report=False,
            target=(s.host, s.port),
        )
        pid = s.pid
    assert summary.profiles == ["baseline"] and summary.plan.accounts == 3000  # the server's own
    assert any("--reuse-server" in n and "not independent" in n for n in summary.notes)
    results = [load(path.parent / r.file) for r in summary.runs]
    assert results and all(r.server.external and r.server.pid is None for r in results)
    assert all(r.summary.audit_ok for r in results) and pid is not None
