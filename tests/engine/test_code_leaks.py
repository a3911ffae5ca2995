"""What a payer learns about a payee from result codes (issue 13, precedence ``codes-3``).

Only what paying reveals: a payer that could not have paid (no money, over its own caps) is told
so, whatever the payee's state; a payment the payer could make is refused when the payee cannot
receive it, and then moves no money. Each case runs on the vectorised ledger and the reference
model side by side (``reference_for``), including the sequential ("dry") settlement of late vetoes.
"""

from __future__ import annotations

import numpy as np

from engine.clock import SequencerClock
from engine.codes import PRECEDENCE, PRECEDENCE_ID, SETTLEMENT_CHECKS, ResultCode
from engine.hooks.freeze import Freeze, FreezeConfig
from engine.hooks.wallet_limits import WalletLimits
from engine.ledger import Ledger
from engine.records import make_batch
from engine.reference import ReferenceLedger
from engine.reference_hooks import reference_for

R = ResultCode


def twins_with_freeze(balances: list[int], classes: list[int]) -> tuple[Ledger, ReferenceLedger, Freeze]:
    freeze = Freeze(FreezeConfig(frozen_fraction=0))
    ledger = Ledger(
        len(balances),
        balance_fen=np.array(balances),
        wallet_class=np.array(classes, dtype=np.uint8),
        hooks=[freeze, WalletLimits()],
        clock=SequencerClock(10**6),  # one long simulated day: no rollover inside a test
    )
    return ledger, reference_for(ledger), freeze


def same(ledger: Ledger, ref: ReferenceLedger, batch: np.ndarray) -> list[int]:
    codes = ledger.apply(batch).tolist()
    assert codes == ref.apply(batch)
    assert ledger.balance.tolist() == ref.balance
    assert ledger.audit().ok
    return codes


def test_a_payer_without_money_learns_nothing_of_the_payee() -> None:
    # Account 1 (class 3: balance cap 2,000 yuan) holds 1,999 yuan; account 0 holds nothing.
    ledger, ref, freeze = twins_with_freeze([0, 199_900, 10**9], [3, 3, 0])
    probes = [50, 100, 101, 150_000]  # under codes-2, 101 fen was the first WALLET_BALANCE_LIMIT
    batch = make_batch([0] * len(probes), [1] * len(probes), probes, transfer_id=list(range(len(probes))))
    assert same(ledger, ref, batch) == [R.INSUFFICIENT_FUNDS] * len(probes)
    freeze.freeze([1])
    ref.hooks[0].freeze([1])  # type: ignore[attr-defined]
    batch = make_batch([0], [1], [10], transfer_id=[10])
    assert same(ledger, ref, batch) == [R.INSUFFICIENT_FUNDS]  # codes-2 answered FROZEN


def test_a_payment_the_payer_could_make_is_refused_for_the_payee_and_moves_nothing() -> None:
    ledger, ref, freeze = twins_with_freeze([0, 199_900, 10**9, 10**9], [3, 3, 0, 0])
    freeze.freeze([3])
    ref.hooks[0].freeze([3])  # type: ignore[attr-defined]
    # From the uncapped, funded account 2: to 1 over its cap, to frozen 3, to 1 within its cap.
    batch = make_batch([2, 2, 2], [1, 3, 1], [101, 5, 100], transfer_id=[0, 1, 2])
    assert same(ledger, ref, batch) == [R.WALLET_BALANCE_LIMIT, R.FROZEN, R.OK]
    assert int(ledger.balance[3]) == 10**9


def test_late_vetoes_are_settled_in_sequence_and_move_no_money() -> None:
    """A transfer refused FROZEN after passing the funds check must not spend the payer's money for
    the transfers after it; one that would have failed for funds says INSUFFICIENT_FUNDS."""
    ledger, ref, freeze = twins_with_freeze([100, 0, 0, 0], [0, 0, 0, 0])
    freeze.freeze([2])
    ref.hooks[0].freeze([2])  # type: ignore[attr-defined]
    # 0 pays 60 to frozen 2 (passes funds: FROZEN, nothing moves), then 60 to 1 (OK: the 60 were
    # not spent), then 60 to frozen 2 again (funds now fail first), then 40 to 3 (OK).
    batch = make_batch([0, 0, 0, 0], [2, 1, 2, 3], [60, 60, 60, 40], transfer_id=[0, 1, 2, 3])
    assert same(ledger, ref, batch) == [R.FROZEN, R.OK, R.INSUFFICIENT_FUNDS, R.OK]
    assert ledger.balance.tolist() == [0, 60, 0, 40]


def test_random_batches_with_late_vetoes_agree_with_the_reference() -> None:
    seed = 13_003
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    n = 60
    ledger, ref, freeze = twins_with_freeze(rng.integers(0, 3_000, n).tolist(), rng.integers(0, 4, n).tolist())
    frozen = rng.choice(n, 8, replace=False)
    freeze.freeze(frozen)
    ref.hooks[0].freeze(frozen.tolist())  # type: ignore[attr-defined]
    next_id = 0
    seen: set[int] = set()
    for _ in range(30):
        k = 200
        payer = rng.choice(np.concatenate([frozen, rng.integers(0, n, 5)]), k)
        payee = rng.integers(0, n, k)
        payee[payee == payer] = (payer[payee == payer] + 1) % n
        batch = make_batch(payer, payee, rng.integers(1, 800, k), transfer_id=list(range(next_id, next_id + k)))
        next_id += k
        seen.update(same(ledger, ref, batch))
    assert {R.FROZEN, R.INSUFFICIENT_FUNDS, R.OK} <= seen


def test_precedence_puts_the_payees_checks_after_the_payers() -> None:
    rank = PRECEDENCE.index
    assert PRECEDENCE_ID == "codes-3"
    assert rank(R.INSUFFICIENT_FUNDS) < rank(R.WALLET_BALANCE_LIMIT) < rank(R.FROZEN)
    assert all(rank(c) < rank(R.FROZEN) for c in SETTLEMENT_CHECKS)
