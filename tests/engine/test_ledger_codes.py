"""One test per result code the ledger itself produces, and the precedence between them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.clock import SequencerClock
from engine.codes import PRECEDENCE, ResultCode
from engine.hooks.base import Hook, Transfers
from engine.hooks.wallet_limits import WalletLimits
from engine.ledger import Ledger, owner_ranges
from engine.records import MAX_BATCH, MAX_ID_AHEAD, MAX_TRANSFER_FEN, MAX_TRANSFER_ID, make_batch
from engine.simtime import CST_OFFSET_NS, NS_PER_DAY
from tests.support.oracle import assert_same, twins

R = ResultCode


_ids = itertools.count(1_000)


def one(ledger: Ledger, payer: int, payee: int, amount: int, **kw: object) -> int:
    """Apply a single transfer (with a fresh id unless one is given) and return its code."""
    kw.setdefault("transfer_id", next(_ids))
    return int(ledger.apply(make_batch([payer], [payee], [amount], **kw))[0])


def test_ok_moves_money() -> None:
    ledger = Ledger(2, balance_fen=100)
    assert one(ledger, 0, 1, 30) == R.OK
    assert ledger.balance.tolist() == [70, 130]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"operator": 4}, R.UNKNOWN_OPERATOR),
        ({"transfer_id": -5}, R.INVALID_ID),
    ],
)
def test_operator_and_id_checks(kwargs: dict[str, int], code: ResultCode) -> None:
    ledger = Ledger(2, balance_fen=100, operators=4)
    assert one(ledger, 0, 1, 10, **kwargs) == code
    assert ledger.balance.tolist() == [100, 100]


def test_ids_above_the_range_are_refused_and_do_not_block_the_operator() -> None:
    """An id of 2**63 - 1 used to raise the window to the top of int64: every later id was STALE_ID
    and next_transfer_id overflowed (issue 13). Out-of-range ids are refused and not consumed."""
    ledger, ref = twins([100, 100, 100])
    top = np.iinfo(np.int64).max
    batch = make_batch([0, 0, 1], [1, 2, 2], [1, 1, 1], operator=1, transfer_id=[top, MAX_TRANSFER_ID + 1, 5])
    assert assert_same(ledger, ref, batch).tolist() == [R.ID_OUT_OF_RANGE, R.ID_OUT_OF_RANGE, R.OK]
    assert int(ledger.ids.high[1]) == 5  # the window did not move
    edge = make_batch([0, 1], [1, 2], [1, 1], operator=1, transfer_id=[6, 6 + MAX_ID_AHEAD])
    assert assert_same(ledger, ref, edge).tolist() == [R.OK, R.OK]
    assert int(ledger.ids.high[1]) + 1 <= top  # next_transfer_id still fits the wire's int64
    assert PRECEDENCE.index(R.INVALID_ID) + 1 == PRECEDENCE.index(R.ID_OUT_OF_RANGE)
    negative = make_batch([0], [1], [1], operator=1, transfer_id=[-1])
    assert assert_same(ledger, ref, negative).tolist() == [R.INVALID_ID]


def test_an_id_at_the_top_of_the_range_does_not_block_its_operator() -> None:
    """2**62 - 1 was a valid id and left its operator no new id above it (issue 13, self-block).
    An id more than MAX_ID_AHEAD beyond the operator's highest is refused and not consumed, also
    inside one batch and after an earlier refused jump; the operator carries on from where it was."""
    ledger, ref = twins([100, 100, 100])
    a = MAX_ID_AHEAD
    ids = [MAX_TRANSFER_ID, a, a - 1, 3 * a, 2 * a - 1, 2 * a - 9]
    batch = make_batch([0] * 6, [1] * 6, [1] * 6, operator=2, transfer_id=ids)
    codes = assert_same(ledger, ref, batch).tolist()
    assert codes == [R.ID_OUT_OF_RANGE, R.ID_OUT_OF_RANGE, R.OK, R.ID_OUT_OF_RANGE, R.OK, R.OK]
    assert int(ledger.ids.high[2]) == 2 * MAX_ID_AHEAD - 1  # the last id is older, but in the window
    nxt = int(ledger.ids.high[2]) + 1  # Welcome.next_transfer_id: usable
    assert assert_same(ledger, ref, make_batch([0], [1], [1], operator=2, transfer_id=[nxt])).tolist() == [R.OK]
    # A refused id was not consumed: within reach later, it applies.
    late = make_batch([0], [1], [1], operator=2, transfer_id=[3 * MAX_ID_AHEAD])
    assert assert_same(ledger, ref, late).tolist() == [R.OK]


def test_duplicate_across_and_within_batches() -> None:
    ledger = Ledger(3, balance_fen=100)
    assert one(ledger, 0, 1, 10, transfer_id=7) == R.OK
    assert one(ledger, 0, 1, 10, transfer_id=7) == R.DUPLICATE
    codes = ledger.apply(make_batch([0, 0], [2, 2], [5, 5], transfer_id=[9, 9]))
    assert codes.tolist() == [R.OK, R.DUPLICATE]
    assert ledger.balance.tolist() == [85, 110, 105]


def test_same_id_under_another_operator_is_not_a_duplicate() -> None:
    ledger = Ledger(2, balance_fen=100)
    assert one(ledger, 0, 1, 10, transfer_id=1, operator=0) == R.OK
    assert one(ledger, 0, 1, 10, transfer_id=1, operator=1) == R.OK


def test_stale_id_below_the_window() -> None:
    ledger = Ledger(2, balance_fen=100, id_window=8)
    assert one(ledger, 0, 1, 1, transfer_id=100) == R.OK
    assert one(ledger, 0, 1, 1, transfer_id=92) == R.STALE_ID
    assert one(ledger, 0, 1, 1, transfer_id=93) == R.OK


@pytest.mark.parametrize("amount", [0, -1, -(2**62), MAX_TRANSFER_FEN + 1, 2**63 - 1])
def test_invalid_amounts(amount: int) -> None:
    ledger = Ledger(2, balance_fen=100)
    assert one(ledger, 0, 1, amount) == R.INVALID_AMOUNT
    assert ledger.audit().ok


def test_same_account() -> None:
    assert one(Ledger(2, balance_fen=100), 1, 1, 10) == R.SAME_ACCOUNT


@pytest.mark.parametrize(("payer", "payee"), [(0, 2), (2, 0), (2**32 - 1, 0)])
def test_unknown_account(payer: int, payee: int) -> None:
    assert one(Ledger(2, balance_fen=100), payer, payee, 10) == R.UNKNOWN_ACCOUNT


def test_forbidden_payer_outside_the_operators_range() -> None:
    ledger = Ledger(10, balance_fen=100, operators=2, owners=owner_ranges(10, 2))
    assert one(ledger, 7, 1, 10, operator=0) == R.FORBIDDEN_PAYER  # account 7 belongs to operator 1
    assert one(ledger, 7, 1, 10, operator=1) == R.OK  # its own operator may debit it
    assert one(ledger, 2, 8, 10, operator=0) == R.OK  # paying another bank's customer is fine
    with pytest.raises(ValueError, match="owners must be"):
        Ledger(10, operators=2, owners=np.array([0, 5]))


def test_insufficient_funds() -> None:
    ledger = Ledger(2, balance_fen=100)
    assert one(ledger, 0, 1, 101) == R.INSUFFICIENT_FUNDS
    assert one(ledger, 0, 1, 100) == R.OK


def test_wallet_caps() -> None:
    hook = WalletLimits()
    # Class 3: single 2,000 yuan, daily 2,000, balance 2,000. Class 0 is uncapped.
    # A long simulated day (10**6 payments), so that the day cannot roll over in this test.
    ledger = Ledger(3, balance_fen=[10**9, 0, 0], wallet_class=[3, 3, 0], hooks=[hook], clock=SequencerClock(10**6))
    assert one(ledger, 0, 2, 200_001) == R.WALLET_SINGLE_LIMIT
    assert one(ledger, 0, 1, 150_000) == R.OK
    assert one(ledger, 0, 1, 60_000) == R.WALLET_DAILY_LIMIT  # 1,500 + 600 yuan > 2,000 daily
    assert one(ledger, 0, 2, 50_000) == R.OK  # 2,000 yuan exactly is allowed
    ledger.set_balance(2, 0)
    ledger.supply_fen = int(ledger.balance.sum())
    assert one(ledger, 2, 1, 60_000) == R.INSUFFICIENT_FUNDS  # a payer without the money learns nothing of the payee
    assert one(ledger, 2, 1, 40_000) == R.INSUFFICIENT_FUNDS  # caps pass, funds do not
    ledger.set_balance(2, 60_000)
    ledger.supply_fen = int(ledger.balance.sum())
    assert one(ledger, 2, 1, 60_000) == R.WALLET_BALANCE_LIMIT  # 1,500 + 600 > 2,000 balance cap


def test_daily_counter_rolls_over_at_cst_midnight_of_the_sequencer_clock() -> None:
    # Four payments a day, the clock starting at a CST midnight: the fifth payment is tomorrow.
    midnight = 20_000 * NS_PER_DAY - CST_OFFSET_NS
    clock = SequencerClock(4, start_ns=midnight)
    ledger = Ledger(2, balance_fen=[10**9, 0], wallet_class=[4, 0], hooks=[WalletLimits()], clock=clock)
    # Class 4: single cap 500 yuan, daily cap 1,000 yuan. Client timestamps say nothing.
    assert one(ledger, 0, 1, 50_000, timestamp_ns=midnight + 5 * NS_PER_DAY) == R.OK
    assert one(ledger, 0, 1, 50_000, timestamp_ns=0) == R.OK
    assert one(ledger, 0, 1, 1, timestamp_ns=midnight + 9 * NS_PER_DAY) == R.WALLET_DAILY_LIMIT
    assert one(ledger, 0, 1, 1, transfer_id=-1) == R.INVALID_ID  # not a payment: the clock stays
    assert clock.payments == 3
    assert one(ledger, 0, 1, 1) == R.WALLET_DAILY_LIMIT  # payment 4, still day 0
    assert one(ledger, 0, 1, 50_000) == R.OK  # payment 5: the day rolled over
    assert clock.payments == 5


def test_a_far_future_timestamp_does_not_stop_another_operators_rollover() -> None:
    # Operator 0 stamps a transfer 2262-04-11 (the largest int64 ns) as the first of a batch.
    # When days came from client timestamps this froze every rollover for every operator.
    clock = SequencerClock(10)
    ledger = Ledger(4, balance_fen=[10**9, 10**9, 0, 0], wallet_class=[4, 4, 0, 0], hooks=[WalletLimits()], clock=clock)
    assert one(ledger, 0, 2, 100, operator=0, timestamp_ns=2**63 - 1) == R.OK
    # Operator 1's customer spends its daily cap (1,000 yuan) and is refused more today.
    assert one(ledger, 1, 3, 50_000, operator=1) == R.OK
    assert one(ledger, 1, 3, 50_000, operator=1) == R.OK
    assert one(ledger, 1, 3, 1, operator=1) == R.WALLET_DAILY_LIMIT
    for _ in range(10):  # a day's worth of payments sequenced: midnight passes
        assert one(ledger, 0, 2, 1, operator=0) == R.OK
    assert one(ledger, 1, 3, 50_000, operator=1) == R.OK  # a new day for operator 1's customer


class Raises(Hook):
    name = "raises"

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def authorize(self, transfers: Transfers, ledger: Ledger) -> np.ndarray | None:
        if self.phase == "authorize":
            raise RuntimeError("boom")
        return None

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        if self.phase == "observe":
            raise RuntimeError("boom")


def test_failing_authorize_hook_refuses_the_whole_batch_and_consumes_no_id() -> None:
    hook = Raises("authorize")
    ledger = Ledger(2, balance_fen=100, hooks=[hook])
    codes = ledger.apply(make_batch([0, 1], [1, 0], [10, 20]))
    assert codes.tolist() == [R.HOOK_ERROR, R.HOOK_ERROR]
    assert ledger.balance.tolist() == [100, 100]
    assert ledger.hook_timing["raises"].errors == 1
    assert "RuntimeError: boom" in ledger.hook_timing["raises"].last_error
    hook.phase = "none"
    assert ledger.apply(make_batch([0, 1], [1, 0], [10, 20])).tolist() == [R.OK, R.OK]  # same ids now pass


def test_failing_observer_is_counted_and_the_batch_stands() -> None:
    ledger = Ledger(2, balance_fen=100, hooks=[Raises("observe")])
    assert one(ledger, 0, 1, 10) == R.OK
    assert ledger.balance.tolist() == [90, 110]
    assert ledger.hook_timing["raises"].errors == 1


def test_hook_vetoes_merge_by_precedence_not_by_hook_order() -> None:
    class Veto(Hook):
        def __init__(self, name: str, code: ResultCode) -> None:
            self.name, self.code = name, code

        def authorize(self, transfers: Transfers, ledger: Ledger) -> np.ndarray:
            return np.full(len(transfers), self.code, dtype=np.uint8)

    for hooks in (
        [Veto("a", R.CREDIT_RESTRICTED), Veto("b", R.FROZEN)],
        [Veto("b", R.FROZEN), Veto("a", R.CREDIT_RESTRICTED)],
    ):
        assert one(Ledger(2, balance_fen=100, hooks=hooks), 0, 1, 10) == R.CREDIT_RESTRICTED


def test_precedence_lists_every_code_once() -> None:
    assert sorted(PRECEDENCE) == sorted(ResultCode)
    assert PRECEDENCE[-1] == R.OK


def test_first_failing_check_wins() -> None:
    # Duplicate id, bad amount, same account and unknown payee all at once: duplicate wins.
    ledger, ref = twins([100, 100])
    assert_same(ledger, ref, make_batch([0], [1], [1], transfer_id=[3]))
    codes = assert_same(ledger, ref, make_batch([5], [5], [0], transfer_id=[3]))
    assert codes.tolist() == [R.DUPLICATE]


def test_oversized_batch_is_refused_before_anything_moves() -> None:
    ledger = Ledger(2, balance_fen=100)
    with pytest.raises(ValueError, match="MAX_BATCH"):
        ledger.apply(make_batch(np.zeros(MAX_BATCH + 1, int), 1, 1))
    assert ledger.stats.transfers == 0


def test_wrong_dtype_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="TRANSFER_DTYPE"):
        Ledger(2).apply(np.zeros(3, dtype=np.int64))


def test_issue_and_redeem_change_the_expected_total() -> None:
    ledger = Ledger(2, balance_fen=100)
    ledger.issue(0, 50)
    ledger.redeem(1, 30)
    assert ledger.audit().ok
    assert ledger.audit().total_fen == 220
    with pytest.raises(ValueError, match="cannot redeem"):
        ledger.redeem(1, 10**6)
    with pytest.raises(ValueError, match="unknown account"):
        ledger.issue(5, 1)


def test_audit_detects_lost_money_and_storage_refuses_negative_balances() -> None:
    ledger = Ledger(3, balance_fen=100)
    ledger.set_balance(0, 99)
    audit = ledger.audit()
    assert not audit.ok and audit.total_fen == audit.expected_fen - 1
    with pytest.raises(ValueError, match="negative balance"):
        ledger.set_balance(0, -1)
    assert ledger.balance.tolist() == [99, 100, 100]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accounts": 0}, "accounts must be"),
        ({"accounts": 2, "balance_fen": -1}, "initial balances"),
        ({"accounts": 2, "wallet_class": 7}, "wallet classes"),
        ({"accounts": 2, "balance_fen": 2**62}, "MAX_SUPPLY_FEN"),
        ({"accounts": 2, "operators": 0}, "operators must be"),
    ],
)
def test_bad_ledger_parameters(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ledger(**kwargs)


def test_ten_million_accounts_cost_at_most_sixteen_bytes_each() -> None:
    ledger = Ledger(10_000_000, balance_fen=1_000, hooks=[WalletLimits()])
    assert ledger.bytes_per_account() <= 16
