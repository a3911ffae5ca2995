"""The seeded workload: reproducible, realistic shape, error paths present."""

from __future__ import annotations

import numpy as np
import pytest

from engine.codes import ResultCode
from engine.ledger import Ledger
from loadgen.generator.workload import Workload, WorkloadConfig


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a = Workload(WorkloadConfig(accounts=5_000, seed=1)).batch(2_000, first_id=0)
    b = Workload(WorkloadConfig(accounts=5_000, seed=1)).batch(2_000, first_id=0)
    c = Workload(WorkloadConfig(accounts=5_000, seed=2)).batch(2_000, first_id=0)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_initial_state_is_valid_and_popularity_is_skewed() -> None:
    w = Workload(WorkloadConfig(accounts=20_000, seed=3))
    balance, wallet_class = w.initial_state()
    assert (balance >= 0).all() and set(np.unique(wallet_class).tolist()) <= {0, 1, 2, 3, 4}
    payers = w.batch(8_192, first_id=0)["payer"]
    counts = np.bincount(payers, minlength=20_000)
    top = np.sort(counts)[::-1]
    assert top[:20].sum() > 20 * 8_192 / 20_000 * 5  # the busiest accounts are far above average


def test_workload_exercises_error_paths_and_mostly_succeeds() -> None:
    w = Workload(WorkloadConfig(accounts=50_000, seed=4, invalid_fraction=0.01, duplicate_fraction=0.01))
    balance, wallet_class = w.initial_state()
    ledger = Ledger(50_000, balance_fen=balance, wallet_class=wallet_class)
    codes = np.concatenate([ledger.apply(w.batch(4_096, first_id=i * 4_096)) for i in range(5)])
    counts = np.bincount(codes, minlength=len(ResultCode))
    assert counts[ResultCode.OK] > 0.9 * len(codes)
    for code in (ResultCode.INVALID_AMOUNT, ResultCode.UNKNOWN_ACCOUNT, ResultCode.DUPLICATE):
        assert counts[code] > 0, code.name
    assert ledger.audit().ok


def test_simulated_clock_advances_one_day_per_accounts_payments() -> None:
    w = Workload(WorkloadConfig(accounts=1_000, payments_per_account_per_day=2.0))
    t = w.timestamps(0, 2_001)
    assert t[2_000] - t[0] == pytest.approx(86_400e9, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accounts": 1}, "accounts"),
        ({"invalid_fraction": 1.5}, "fraction"),
        ({"class_shares": (0.5, 0.5, 0.5, 0.0, 0.0)}, "sum to 1"),
        ({"payments_per_account_per_day": 0}, "payments_per_account_per_day"),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkloadConfig(**kwargs)  # type: ignore[arg-type]
