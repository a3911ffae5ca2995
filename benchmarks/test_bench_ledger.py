"""pytest-benchmark: Ledger.apply on the default workload (outside the default test run).

Run: python -m pytest benchmarks -m benchmark --benchmark-enable
"""

from __future__ import annotations

import pytest

from engine.ledger import Ledger
from engine.profiles import build_hooks
from loadgen.generator.workload import BatchPool, Workload, WorkloadConfig

pytestmark = pytest.mark.benchmark

ACCOUNTS = 1_000_000
BATCH = 8_192


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload(WorkloadConfig(accounts=ACCOUNTS))


@pytest.mark.parametrize("profile", ["baseline", "limits"])
def test_apply(benchmark, workload: Workload, profile: str) -> None:  # type: ignore[no-untyped-def]
    balance, wallet_class = workload.initial_state()
    ledger = Ledger(ACCOUNTS, balance_fen=balance, wallet_class=wallet_class, hooks=build_hooks(profile))
    stream = BatchPool(workload, 16, BATCH)

    def apply_next() -> None:
        ledger.apply(stream.next())
        ledger.run_deferred()

    benchmark.extra_info["transfers_per_round"] = BATCH
    benchmark.pedantic(apply_next, rounds=200, warmup_rounds=16)
    assert ledger.audit().ok
