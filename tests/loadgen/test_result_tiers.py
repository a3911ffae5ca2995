"""The validators' tier CPU in every result file of a run with local validators (issue 19)."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from benchmarks.signed_tiers import tier_cpu
from loadgen.generator.gateway import LoadConfig
from loadgen.harness.cpu_split import cpu_ns_per_payment
from loadgen.results.environment import collect
from loadgen.results.run import RunResult, build_result, loads
from loadgen.results.tiers import measured_tiers

MS = 1_000_000


def _tier(kind: str, workers: int, cpu_s: float, deaths: int = 0) -> dict[str, Any]:
    return {"kind": kind, "workers": workers, "cpu_s": cpu_s, "worker_deaths": deaths, "transfers": 0}


def _stats(tier: dict[str, Any] | None, transfers: int, engine_s: float) -> dict[str, Any]:
    stats: dict[str, Any] = {"engine_s": engine_s, "ledger": {"transfers": transfers, "batches": transfers // 50}}
    return stats | ({"validators": tier} if tier is not None else {})


def _run(start: dict[str, Any] | None, end: dict[str, Any] | None) -> RunResult:
    """A 2 s window at 1,000/s (2,000 payments applied), server 0.25 s and generator 0.5 s of CPU."""
    config = LoadConfig(rate_tps=1_000, seconds=2.0, warmup=0.0, operators=1, drain=1.0)
    m = config.new_measurement()
    schedule = np.arange(2_000, dtype=np.int64) * MS
    m.scheduled = m.scheduled_measured = 2_000
    for a in range(0, 2_000, 100):
        frame = schedule[a : a + 100]
        m.on_sent(frame, int(frame[-1]) + MS)
        m.on_results(frame, np.zeros(100, dtype=np.uint8), int(frame[-1]) + 2 * MS)
    m.generator_cpu_s = 0.5
    result = build_result(
        kind="run",
        m=m,
        config=config,
        environment=collect(),
        welcome={"accounts": 1_000, "profile": "signed"},
        failures=[],
        server_pid=123,
        server_cpu_s=0.25,
        stats_start=_stats(start, 1_000, 1.0),
        stats_end=_stats(end, 3_000, 1.1),
        hooks={},
        server_args=("--profile", "signed", "--validators", "2"),
    )
    return msgspec.structs.replace(result, cpu_ns_per_payment=cpu_ns_per_payment(result))


def test_a_run_with_local_validators_records_their_cpu_and_the_benchmark_reads_it() -> None:
    result = _run(_tier("local", 2, 10.0), _tier("local", 2, 10.3))
    assert result.server.tier_cpu_s == {"validators": pytest.approx(0.3)}
    assert result.server.tier_workers == {"validators": 2}
    back = loads(msgspec.json.encode(result))  # the file keeps it
    assert back.server.tier_cpu_s == result.server.tier_cpu_s
    split = result.cpu_ns_per_payment
    assert split["validators"] == pytest.approx(0.3e9 / 2_000)
    assert split["generator"] == pytest.approx(0.5e9 / 2_000)
    cpu = tier_cpu(result)  # benchmarks/signed_tiers.py groups the file's own split
    assert cpu is not None
    assert cpu.validators_us == pytest.approx(150.0)
    assert cpu.generator_us == pytest.approx(250.0)
    assert cpu.server_us == pytest.approx(125.0, abs=0.01)  # the server process's 0.25 s, all its tiers
    assert cpu.total_us == pytest.approx(sum(split.values()) / 1e3, abs=0.01)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, None),  # signatures off
        (_tier("inline", 0, 0.0), _tier("inline", 0, 0.0)),  # verified on the server's thread: its CPU
        (_tier("ray", 4, 0.0), _tier("ray", 4, 0.0)),  # actors elsewhere: not the server's to report
        (_tier("local", 2, 10.0), _tier("local", 2, 4.0, deaths=1)),  # a worker died: its CPU went with it
    ],
)
def test_no_tier_cpu_where_the_stats_do_not_measure_it(
    start: dict[str, Any] | None, end: dict[str, Any] | None
) -> None:
    assert measured_tiers(_stats(start, 0, 0.0), _stats(end, 0, 0.0)) == ({}, {})
    result = _run(start, end)
    assert result.server.tier_cpu_s == {} and result.server.tier_workers == {}
    assert tier_cpu(result) is not None and tier_cpu(result).validators_us == 0.0  # type: ignore[union-attr]


def test_each_signed_trial_is_calibrated_just_before_it_and_keeps_the_rate_in_its_calibration() -> None:
    """``signed_tiers`` judges a trial against the host's Ed25519 speed measured just before it
    (the host's speed moves within minutes): the trial's calibration carries that rate, the other
    rates stay, and 0 seconds keeps the search's own."""
    from benchmarks.signed_tiers import trial_calibration
    from loadgen.harness.calibration import ED25519_RATE, Calibration

    search = Calibration(engine_tps=1e6, accounts=10, batch=10, seconds=0.1, rates={ED25519_RATE: 1.0, "other": 7.0})
    assert trial_calibration(search, 0) is search
    trial = trial_calibration(search, 0.05)
    assert trial.rates["other"] == 7.0 and trial.engine_tps == search.engine_tps
    assert trial.rates[ED25519_RATE] > 1_000  # measured now (libsodium verifies thousands a core-second)
