"""Narrow per-account storage against int64 models: balances past 2**32, day-stamped spending.

The ledger stores balances as uint32 with a side table (``engine.balances``) and today's spending
as 24 bits plus a day stamp (``engine.hooks.wallet_limits``). These tests drive both across their
bounds and compare with plain Python ints (the reference ledger and a dict), so a wrap, a lost
side-table entry or an aliased day stamp shows up as a differing code or balance.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.accounts import unique_accounts
from engine.balances import SPILLED, NarrowBalances
from engine.clock import SequencerClock
from engine.hooks.wallet_limits import WalletLimits, WalletLimitsConfig
from engine.ledger import Ledger
from engine.reference import ReferenceLedger
from tests.engine.test_ledger_properties import to_batch
from tests.support.oracle import assert_same, random_batch, twins

ACCOUNTS = 5
near_spill = st.one_of(st.integers(0, 200_000), st.integers(SPILLED - 150_000, SPILLED + 150_000))


def assert_canonical(store: NarrowBalances, model: np.ndarray) -> None:
    """The representation is a function of the balances alone (docs/design.md)."""
    assert np.array_equal(store.narrow, np.minimum(model, SPILLED).astype(np.uint32))
    assert store.spill_accounts.tolist() == np.flatnonzero(model >= SPILLED).tolist()
    assert store.spill_fen.tolist() == model[model >= SPILLED].tolist()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2**40), min_size=1, max_size=12),
    st.lists(
        st.lists(st.tuples(st.integers(0, 11), st.one_of(st.integers(0, 2**33), st.just(SPILLED))), max_size=8),
        max_size=8,
    ),
)
def test_narrow_balances_equal_an_int64_model(start: list[int], writes: list[list[tuple[int, int]]]) -> None:
    model = np.array(start, dtype=np.int64)
    store = NarrowBalances.from_fen(len(model), model)
    for step in writes:
        chosen = dict((a % len(model), v) for a, v in step)  # distinct accounts per scatter
        ids = np.array(list(chosen), dtype=np.int64)
        values = np.array(list(chosen.values()), dtype=np.int64)
        store.scatter(ids, values)
        model[ids] = values
        assert store.gather(np.arange(len(model))).tolist() == model.tolist()
        assert store.total_fen() == int(model.sum())
        assert_canonical(store, model)
    assert store.to_int64().tolist() == model.tolist()


def test_narrow_balances_refuse_negative_and_sentinel_values() -> None:
    store = NarrowBalances.from_fen(3, 10)
    with pytest.raises(ValueError, match="negative balance"):
        store.scatter(np.array([1]), np.array([-1]))
    assert store.to_int64().tolist() == [10, 10, 10]
    with pytest.raises(ValueError, match="side table"):
        NarrowBalances(np.array([SPILLED], dtype=np.uint32))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(near_spill, min_size=ACCOUNTS, max_size=ACCOUNTS),
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, ACCOUNTS - 1),
                st.integers(0, ACCOUNTS - 1),
                st.integers(1, 300_000),
                st.integers(0, 400),
                st.just(0),
            ),
            min_size=1,
            max_size=40,
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_baseline_balances_pushed_past_2_32_equal_the_reference(start: list[int], rounds: list[list]) -> None:
    ledger, ref = twins(start, [0] * ACCOUNTS, operators=1, id_window=512)
    for rows in rounds:
        assert_same(ledger, ref, to_batch(rows))
        assert ledger.audit().ok
        assert_canonical(ledger.balances, np.array(ref.balance, dtype=np.int64))


def test_money_moves_through_the_side_table_and_back() -> None:
    ledger, ref = twins([SPILLED - 10, SPILLED - 10, 1000], [0, 0, 0], operators=1)
    assert_same(ledger, ref, to_batch([(0, 1, 20, 1, 0), (2, 0, 900, 2, 0)]))
    assert ledger.balances.spill_accounts.tolist() == [0, 1]  # both pushed past SPILLED
    assert_same(ledger, ref, to_batch([(1, 2, 2_000, 3, 0)]))
    assert ledger.balances.spill_accounts.tolist() == [0]  # 1 fell back below: back in uint32
    assert_canonical(ledger.balances, np.array(ref.balance, dtype=np.int64))
    assert ledger.balance.tolist() == ref.balance and ledger.audit().ok


@pytest.mark.parametrize("scrub_slice", [1, 2, None])
def test_day_stamped_spending_equals_the_reference_over_thousands_of_days(scrub_slice: int | None) -> None:
    # One payment per day: each batch spans days, the 8-bit day stamp wraps dozens of times, and
    # with a scrub of 1 account per batch passes must be finished at once (the forced path).
    seed = 20_261_203
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    accounts = 16
    classes = [3, 3, 4, 4, 0, 1, 2, 2] * 2
    balances = [150_000, 90_000, 60_000, 40_000, 10**9, 10**6, 500_000, 20_000] * 2
    hook = WalletLimits(WalletLimitsConfig(), scrub_slice=scrub_slice)
    ledger = Ledger(
        accounts, balance_fen=balances, wallet_class=classes, operators=4, hooks=[hook], clock=SequencerClock(1)
    )
    ref = ReferenceLedger(balances, classes, operators=4, wallet_limits=WalletLimitsConfig(), payments_per_day=1)
    next_id = 0
    first_day = None
    for _ in range(300):
        n = int(rng.integers(1, 30))
        batch = random_batch(rng, n, accounts, next_id=next_id)
        batch["amount_fen"] = np.where(rng.random(n) < 0.5, rng.integers(1, 120_000, n), batch["amount_fen"])
        assert_same(ledger, ref, batch)
        next_id += n
        first_day = hook.day if first_day is None else first_day
    assert hook.day is not None and first_day is not None and hook.day - first_day > 256 * 10


@pytest.mark.parametrize(("scrub_slice", "gap_batches"), [(1, 1), (1, 255), (2, 3), (None, 1), (None, 255)])
def test_a_payer_idle_for_exactly_256_days_is_not_charged_its_old_spending(
    scrub_slice: int | None, gap_batches: int
) -> None:
    # One payment per day. Account 2 (class 3, daily cap 2,000 yuan) spends 1,900 yuan on day d;
    # 255 payments between accounts 0 and 1 follow (in ``gap_batches`` batches), so account 2
    # pays again on day d + 256, when the 8-bit day stamp of its old spending matches today's.
    classes, balances = [1, 1, 3], [10**7, 10**7, 1_000_000]
    hook = WalletLimits(WalletLimitsConfig(), scrub_slice=scrub_slice)
    ledger = Ledger(3, balance_fen=balances, wallet_class=classes, operators=1, hooks=[hook], clock=SequencerClock(1))
    ref = ReferenceLedger(balances, classes, operators=1, wallet_limits=WalletLimitsConfig(), payments_per_day=1)
    assert_same(ledger, ref, to_batch([(2, 0, 190_000, 0, 0)]))
    gap = [(i % 2, 1 - i % 2, 100, 1 + i, 0) for i in range(255)]
    for part in np.array_split(np.arange(255), gap_batches):
        assert_same(ledger, ref, to_batch([gap[i] for i in part]))
    codes = assert_same(ledger, ref, to_batch([(2, 0, 50_000, 300, 0)]))
    assert codes.tolist() == [0] and hook.day is not None and (hook.day - 256) % 256 == hook.day % 256


def test_daily_cap_above_24_bits_is_refused_with_the_reason() -> None:
    from engine.hooks.wallet_limits import ClassCaps

    with pytest.raises(ValueError, match="24 bits"):
        WalletLimitsConfig(class_1=ClassCaps(500_000, 50_000, 167_773))
    WalletLimitsConfig(class_1=ClassCaps(500_000, 50_000, 167_772))


@given(st.lists(st.integers(0, 2**32 - 1), max_size=300), st.integers(1, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_unique_accounts_is_numpy_unique_with_inverse(ids: list[int], modulus: int) -> None:
    accounts = (np.array(ids, dtype=np.uint64) % modulus).astype(np.uint32)  # small moduli repeat ids
    distinct, inverse = unique_accounts(accounts)
    expected, expected_inverse = np.unique(accounts, return_inverse=True)
    assert distinct.dtype == np.intp and inverse.dtype == np.intp
    assert distinct.tolist() == expected.tolist()
    assert inverse.tolist() == expected_inverse.ravel().tolist()
