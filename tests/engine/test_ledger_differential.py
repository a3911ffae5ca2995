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


def test_certain_insufficient_funds_leave_the_loop() -> None:
    # 0 asks 100 holding 10, with at most 5 coming in: it fails in any order, so it neither
    # sends its payer's other transfers to the one-at-a-time loop nor holds up the payee's.
    ledger, ref = twins([10, 0, 5, 0])
    batch = make_batch([0, 2, 0], [1, 0, 3], [100, 5, 3])
    codes = assert_same(ledger, ref, batch)
    assert codes.tolist() == [ResultCode.INSUFFICIENT_FUNDS, ResultCode.OK, ResultCode.OK]
    assert ledger.stats.exact_path_transfers == 0


def test_certain_daily_limit_leaves_the_loop() -> None:
    # Class 4: daily cap 1,000 yuan, single cap 500. Account 0 spends the day's cap in the first
    # batch; in the second its payment fails the daily cap in any order, and the credit it gets
    # (and the payer's other checks) are decided without the loop.
    # A thousand accounts, so that the sequencer's clock (a payment per account a day) stays in one day.
    balances, classes = np.zeros(1_000, dtype=np.int64), np.zeros(1_000, dtype=np.uint8)
    balances[[0, 2]], classes[0] = [100_000, 10**6], 4
    ledger, ref = twins(balances, classes, limits=True)
    assert_same(ledger, ref, make_batch([0, 0], [1, 1], [50_000, 50_000], transfer_id=[0, 1]))
    codes = assert_same(ledger, ref, make_batch([0, 2], [1, 0], [1, 5], transfer_id=[2, 3]))
    assert codes.tolist() == [ResultCode.WALLET_DAILY_LIMIT, ResultCode.OK]
    assert ledger.stats.exact_path_transfers == 0


def test_certain_failures_beside_order_dependent_ones() -> None:
    # Account 0 (holding 10) has one hopeless debit (50 > 10 + 20) and two that depend on a
    # credit of 20 arriving in the middle: the loop decides those, the hopeless one stays out.
    ledger, ref = twins([10, 100, 0, 0])
    batch = make_batch([0, 0, 1, 0], [2, 3, 0, 2], [50, 10, 20, 15])
    codes = assert_same(ledger, ref, batch)
    assert codes.tolist() == [ResultCode.INSUFFICIENT_FUNDS, ResultCode.OK, ResultCode.OK, ResultCode.OK]
    assert ledger.stats.exact_path_transfers == 3
