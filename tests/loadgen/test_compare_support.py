"""The e2e compare test's busy-machine rule: a skip only when every failed trial's verdict says
the generator fell behind, never otherwise (``tests.support.compare.generator_fell_behind``)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from engine.profiles import CompareSettings
from loadgen.results.compare import CompareSummary, RunRef
from loadgen.results.run import RunResult, load, save, verdict_of
from loadgen.results.verdict import Kind
from tests.support.compare import TINY_PLAN, generator_fell_behind, tiny_plan

BASELINE = Path(__file__).parent / "fixtures" / "results" / "20261122T090419Z-run-baseline-300000tps.json"
SETTINGS = CompareSettings(slo_p99_ms=20.0)


def _missed(*, generator_kept_schedule: bool) -> RunResult:
    """The fixture run with a p99 over the SLO, the generator on or behind its schedule."""
    r = load(BASELINE)
    lag = msgspec.structs.replace(r.generator.send_lag, p99_ms=1.0 if generator_kept_schedule else 50.0)
    return msgspec.structs.replace(
        r,
        latency=msgspec.structs.replace(r.latency, p99_ms=60.0),
        generator=msgspec.structs.replace(r.generator, kept_schedule=generator_kept_schedule, send_lag=lag),
    )


def _summary(folder: Path, failed: list[RunResult]) -> CompareSummary:
    refs = []
    for r in failed:
        path = save(r, folder / "runs")
        refs.append(
            RunRef(
                file=str(path.relative_to(folder)), profile="baseline", repeat=1, stage="search", phase="bisect",
                offered_tps=r.summary.offered_tps, settled_tps=0.0, p99_ms=r.latency.p99_ms, sustained=False,
                generator_kept_schedule=r.generator.kept_schedule,
            )
        )  # fmt: skip
    base = load(BASELINE)
    return CompareSummary(
        created_utc=base.created_utc, command="test", scenario=None, profiles=["baseline"], seed=1, plan=TINY_PLAN,
        settings=SETTINGS, order=[], equal_order=[], common_rates_tps=[], searches=[], runs=refs,
        environment=base.environment, duration_s=0.0, notes=[],
    )  # fmt: skip


def test_every_failed_trial_behind_is_the_machine_and_says_why(tmp_path: Path) -> None:
    behind = _missed(generator_kept_schedule=False)
    assert verdict_of(behind, SETTINGS).kind is Kind.GENERATOR_BEHIND
    reason = generator_fell_behind(_summary(tmp_path, [behind, behind]), tmp_path)
    assert reason is not None and reason.count("verdict: generator fell behind (") == 2


@pytest.mark.parametrize("others", [["not sustained"], []])
def test_any_other_failure_or_none_leaves_the_test_to_judge(tmp_path: Path, others: list[str]) -> None:
    failed = [_missed(generator_kept_schedule=False)] if others else []
    failed += [_missed(generator_kept_schedule=True) for _ in others]
    if others:
        assert verdict_of(failed[-1], SETTINGS).kind is Kind.NOT_SUSTAINED
    assert generator_fell_behind(_summary(tmp_path, failed), tmp_path) is None


def test_tiny_plan_overrides_are_validated() -> None:
    assert tiny_plan(accounts=2_000).accounts == 2_000 and tiny_plan().repeats == TINY_PLAN.repeats
    with pytest.raises(ValueError, match="accounts >= 2"):
        tiny_plan(accounts=1)
