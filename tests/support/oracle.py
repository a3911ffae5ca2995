"""The reference oracle in tests: the vectorised ledger and the one-at-a-time model side by side.

``twins`` builds both in one starting state, ``random_batch`` makes adversarial batches (conflicts,
chains, bad amounts, unknown accounts, re-used ids), and ``assert_same`` applies a batch to both and
fails on the first code or balance that differs. The model itself is ``engine.reference``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

from engine.hooks.wallet_limits import WalletLimits, WalletLimitsConfig
from engine.ledger import Ledger, owner_ranges
from engine.records import MAX_TRANSFER_FEN, TRANSFER_DTYPE
from engine.reference import ReferenceLedger


def twins(
    balances: Sequence[int] | np.ndarray,
    classes: Sequence[int] | np.ndarray | None = None,
    *,
    limits: bool = False,
    operators: int = 4,
    id_window: int = 64,
    owned: bool = False,
) -> tuple[Ledger, ReferenceLedger]:
    """A vectorised ledger and the reference model in the same starting state."""
    balances = np.asarray(balances, dtype=np.int64)
    classes = np.full(len(balances), 1, dtype=np.uint8) if classes is None else np.asarray(classes, dtype=np.uint8)
    config = WalletLimitsConfig()
    owners = owner_ranges(len(balances), operators) if owned else None
    ledger = Ledger(
        len(balances),
        balance_fen=balances,
        wallet_class=classes,
        operators=operators,
        id_window=id_window,
        hooks=[WalletLimits(config)] if limits else [],
        owners=owners,
    )
    ref = ReferenceLedger(
        balances.tolist(),
        classes.tolist(),
        operators=operators,
        id_window=id_window,
        wallet_limits=config if limits else None,
        owners=None if owners is None else owners.tolist(),
    )
    return ledger, ref


def random_batch(rng: np.random.Generator, n: int, accounts: int, *, next_id: int, operators: int = 4) -> np.ndarray:
    """An adversarial random batch: conflicts, chains, bad amounts, unknown accounts, re-used ids."""
    b = np.zeros(n, dtype=TRANSFER_DTYPE)
    hot = rng.integers(0, accounts, 3)
    # Half the payers come from three hot accounts, so debits conflict and chains form.
    payer = np.where(rng.random(n) < 0.5, rng.choice(hot, n), rng.integers(0, accounts, n))
    payee = np.where(rng.random(n) < 0.3, rng.choice(hot, n), rng.integers(0, accounts, n))
    b["payer"] = payer
    b["payee"] = payee
    amount = rng.integers(1, 3_000, n)
    special = rng.random(n)
    amount[special < 0.02] = 0
    amount[(special >= 0.02) & (special < 0.04)] = -rng.integers(
        1, 100, int(((special >= 0.02) & (special < 0.04)).sum())
    )
    amount[(special >= 0.04) & (special < 0.05)] = MAX_TRANSFER_FEN + 1
    amount[(special >= 0.05) & (special < 0.06)] = MAX_TRANSFER_FEN
    b["amount_fen"] = amount
    unknown = rng.random(n) < 0.02
    b["payee"][unknown] = accounts + rng.integers(0, 3, int(unknown.sum()))
    b["operator"] = rng.integers(0, operators + 1, n)  # operator == operators is unknown
    ids = np.arange(next_id, next_id + n)
    reuse = rng.random(n) < 0.1
    ids[reuse] = rng.integers(max(0, next_id - 200), next_id + n, int(reuse.sum()))
    ids[rng.random(n) < 0.01] = -1
    b["transfer_id"] = ids
    b["category"] = rng.integers(0, 16, n)
    return b


def assert_same(ledger: Ledger, ref: ReferenceLedger, batch: np.ndarray) -> np.ndarray:
    """Apply ``batch`` to both and check codes and balances agree; returns the codes."""
    codes = ledger.apply(batch)
    expected = ref.apply(batch)
    mismatch = np.flatnonzero(codes != np.asarray(expected, dtype=np.uint8))
    assert mismatch.size == 0, (
        f"codes differ at {mismatch[:10].tolist()}: got {codes[mismatch[:10]].tolist()}, "
        f"reference {[expected[i] for i in mismatch[:10]]}"
    )
    assert ledger.balance.tolist() == ref.balance, "balances differ from the one-at-a-time reference"
    audit = ledger.audit()
    assert audit.ok, str(audit)
    return codes


def v1_entry(kind: int, seq: int, payload: bytes) -> bytes:
    """A journal entry in format 1's framing (to test that old journals still replay)."""
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<BQ", kind, seq)))
    return struct.pack("<IBQI", len(payload), kind, seq, crc) + payload
