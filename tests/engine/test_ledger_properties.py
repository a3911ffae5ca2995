"""Property tests: for any batch, the ledger equals the reference, its own one-by-one application,
conserves money and never leaves a balance negative."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.hooks.wallet_limits import WalletLimits
from engine.ledger import Ledger
from engine.records import MAX_TRANSFER_FEN, TRANSFER_DTYPE
from tests.support.oracle import assert_same, twins

ACCOUNTS = 5

transfer = st.tuples(
    st.integers(0, ACCOUNTS + 1),  # payer (two unknown ids)
    st.integers(0, ACCOUNTS + 1),  # payee
    st.one_of(st.integers(-3, 120_000), st.sampled_from([MAX_TRANSFER_FEN, MAX_TRANSFER_FEN + 1, -(2**63)])),
    st.integers(-1, 30),  # transfer id: small range, so duplicates and stale ids are common
    st.integers(0, 2),  # operator (2 is unknown with operators=2)
)
batches = st.lists(st.lists(transfer, min_size=1, max_size=40), min_size=1, max_size=6)
ledgers = st.tuples(
    st.lists(st.integers(0, 150_000), min_size=ACCOUNTS, max_size=ACCOUNTS),
    st.lists(st.integers(0, 4), min_size=ACCOUNTS, max_size=ACCOUNTS),
    st.booleans(),
)


def to_batch(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    b = np.zeros(len(rows), dtype=TRANSFER_DTYPE)
    for i, (payer, payee, amount, tid, op) in enumerate(rows):
        b[i] = (tid, 0, amount, 0, payer, payee, 0, op, 0)
    return b


@settings(max_examples=300, deadline=None)
@given(ledgers, batches)
def test_ledger_equals_reference(state: tuple[list[int], list[int], bool], rounds: list[list]) -> None:
    balances, classes, limits = state
    ledger, ref = twins(balances, classes, limits=limits, operators=2, id_window=16)
    for rows in rounds:
        codes = assert_same(ledger, ref, to_batch(rows))
        assert len(codes) == len(rows)
        assert (ledger.balance >= 0).all()


@settings(max_examples=200, deadline=None)
@given(ledgers, batches)
def test_batch_equals_one_at_a_time(state: tuple[list[int], list[int], bool], rounds: list[list]) -> None:
    balances, classes, limits = state

    def build() -> Ledger:
        return Ledger(
            ACCOUNTS,
            balance_fen=np.array(balances),
            wallet_class=np.array(classes),
            operators=2,
            id_window=16,
            hooks=[WalletLimits()] if limits else [],
        )

    batched, single = build(), build()
    for rows in rounds:
        b = to_batch(rows)
        together = batched.apply(b)
        apart = np.concatenate([single.apply(b[i : i + 1]) for i in range(len(b))])
        assert together.tolist() == apart.tolist()
        assert batched.balance.tolist() == single.balance.tolist()
        assert batched.audit().ok
