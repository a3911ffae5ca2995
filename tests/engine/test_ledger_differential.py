"""The vectorised ledger against the one-at-a-time reference, on random and adversarial batches."""

from __future__ import annotations

import numpy as np
import pytest

from engine.codes import ResultCode
from engine.records import make_batch
from loadgen.generator.workload import Workload, WorkloadConfig
from tests.support.oracle import assert_same, random_batch, twins


@pytest.mark.parametrize(
    ("limits", "owned"), [(False, False), (True, False), (True, True)], ids=["baseline", "wallet_limits", "owned"]
)
def test_random_adversarial_batches_match_reference(seed: int, limits: bool, owned: bool) -> None:
    rng = np.random.default_rng(seed)
    accounts = 40
    balances = rng.integers(0, 20_000, accounts)
    classes = rng.integers(0, 5, accounts)
    ledger, ref = twins(balances, classes, limits=limits, owned=owned)
    next_id = 0
    seen_codes: set[int] = set()
    for _ in range(40):
        n = int(rng.integers(1, 400))
        batch = random_batch(rng, n, accounts, next_id=next_id)
        next_id += n
        seen_codes.update(assert_same(ledger, ref, batch).tolist())
    # The workload must actually exercise the exact path and the error paths.
    assert ledger.stats.exact_path_transfers > 0
    assert {ResultCode.OK, ResultCode.INSUFFICIENT_FUNDS, ResultCode.DUPLICATE} <= seen_codes


@pytest.mark.parametrize("limits", [False, True], ids=["baseline", "wallet_limits"])
def test_realistic_workload_matches_reference(seed: int, limits: bool) -> None:
    workload = Workload(WorkloadConfig(accounts=2_000, seed=seed, payments_per_account_per_day=0.5))
    balances, classes = workload.initial_state()
    ledger, ref = twins(balances, classes, limits=limits, id_window=1 << 12)
    for i in range(12):
        assert_same(ledger, ref, workload.batch(1_000, first_id=i * 1_000, operator=i % 3))


def test_chain_inside_a_batch_sees_earlier_credits() -> None:
    # A pays B, B pays C with that money, C pays D with it: all in one batch.
    ledger, ref = twins([100, 0, 0, 0])
    codes = assert_same(ledger, ref, make_batch([0, 1, 2], [1, 2, 3], [100, 100, 100]))
    assert codes.tolist() == [ResultCode.OK] * 3
    assert ledger.balance.tolist() == [0, 0, 0, 100]


def test_many_debits_of_one_near_empty_account() -> None:
    # 1,000 debits of 7 fen from an account holding 50: exactly the first 7 succeed.
    ledger, ref = twins([50, 0, 0])
    n = 1_000
    codes = assert_same(ledger, ref, make_batch(np.zeros(n, int), np.ones(n, int), np.full(n, 7)))
    assert (codes[:7] == ResultCode.OK).all()
    assert (codes[7:] == ResultCode.INSUFFICIENT_FUNDS).all()


def test_credit_in_the_middle_unlocks_later_debits() -> None:
    ledger, ref = twins([10, 100, 0])
    batch = make_batch([0, 1, 0, 0], [2, 0, 2, 2], [10, 50, 40, 20])
    codes = assert_same(ledger, ref, batch)
    assert codes.tolist() == [ResultCode.OK, ResultCode.OK, ResultCode.OK, ResultCode.INSUFFICIENT_FUNDS]


def test_balance_cap_released_by_a_later_debit_is_exact() -> None:
    # Class 4 balance cap is 1,000 yuan: a credit above it fails until the payee spends.
    cap = 1_000 * 100
    ledger, ref = twins([cap, 10**8, 0], [4, 0, 0], limits=True)
    batch = make_batch([1, 0, 1], [0, 2, 0], [100, 40_000, 100])
    codes = assert_same(ledger, ref, batch)
    assert codes.tolist() == [ResultCode.WALLET_BALANCE_LIMIT, ResultCode.OK, ResultCode.OK]
