"""Balances in 4 bytes per account, exact: uint32 storage, larger balances in a checked side table.

1.4 billion int64 balances take 11.2 GB; uint32 ones take 5.6 GB. Every capped wallet class's
balance cap is below 2**32 - 1 fen (``WalletLimitsConfig`` checks it), so under caps a personal
wallet's balance always fits. What does not fit is rare: an uncapped institutional wallet (class
0) that received more than 42.9 million yuan, or any account under a profile without caps
(``baseline``). Those live in a side table:

* ``narrow[a] == SPILLED`` (2**32 - 1) if and only if account ``a``'s balance is >= SPILLED, and
  then its balance is ``spill_fen[i]`` where ``spill_accounts[i] == a``; otherwise ``narrow[a]``
  is the balance. The representation is canonical: a balance that falls back below SPILLED
  moves back, so equal balances are equal bytes.
* Money arithmetic never happens in uint32: ``gather`` widens to int64, the ledger computes and
  checks in int64, ``scatter`` stores, and a negative balance is refused rather than wrapped.

The side table is two sorted int64 arrays (16 bytes per spilled account), searched with
``np.searchsorted``; it is rewritten only when an account enters or leaves it.
"""

from __future__ import annotations

import numpy as np

#: The narrow value meaning "this balance is in the side table".
SPILLED = 2**32 - 1
_SPILLED_U32 = np.uint32(SPILLED)


class NarrowBalances:
    """Per-account balances: ``narrow`` (uint32, adopted without copying) plus the side table."""

    def __init__(self, narrow: np.ndarray) -> None:
        if narrow.dtype != np.uint32 or narrow.ndim != 1:
            raise TypeError(f"narrow balances must be a 1-d uint32 array, got {narrow.dtype} of shape {narrow.shape}")
        self.narrow = narrow
        #: Accounts whose balance is >= SPILLED, sorted, and their balances (int64 fen).
        self.spill_accounts = np.zeros(0, dtype=np.int64)
        self.spill_fen = np.zeros(0, dtype=np.int64)
        if len(narrow) and int(narrow.max()) == SPILLED:
            raise ValueError(f"a narrow balance of {SPILLED} fen must be given as int64 (it belongs in the side table)")

    @classmethod
    def from_fen(cls, accounts: int, balance_fen: int | np.ndarray) -> NarrowBalances:
        """Balances from int64 fen (a scalar or one per account); those >= SPILLED go to the side table."""
        fen = np.asarray(balance_fen)
        if fen.ndim and len(fen) != accounts:
            raise ValueError(f"need one balance per account ({accounts}), got {len(fen)}")
        if fen.size and int(fen.min()) < 0:
            raise ValueError("initial balances must be >= 0")
        if fen.ndim == 0 and int(fen) < SPILLED:  # one value for all: no per-account temporaries
            return cls(np.full(accounts, int(fen), dtype=np.uint32))
        store = cls(np.zeros(accounts, dtype=np.uint32))
        ids = np.arange(accounts, dtype=np.int64)
        store.scatter(ids, np.broadcast_to(fen.astype(np.int64), (accounts,)))
        return store

    def __len__(self) -> int:
        return len(self.narrow)

    @property
    def nbytes(self) -> int:
        return self.narrow.nbytes + self.spill_accounts.nbytes + self.spill_fen.nbytes

    def gather(self, accounts: np.ndarray) -> np.ndarray:
        """Balances of ``accounts`` as int64 fen."""
        fen = self.narrow[accounts].astype(np.int64)
        if len(self.spill_accounts):
            big = np.flatnonzero(fen == SPILLED)
            if len(big):
                fen[big] = self.spill_fen[np.searchsorted(self.spill_accounts, accounts[big])]
        return fen

    def scatter(self, accounts: np.ndarray, fen: np.ndarray) -> None:
        """Store balances ``fen`` (int64, >= 0) of distinct ``accounts``; refuses a negative one."""
        if not len(fen):
            return
        if int(fen.min()) < 0:
            raise ValueError(f"refusing to store a negative balance ({int(fen.min())} fen)")
        big = fen >= SPILLED
        any_big = bool(big.any())
        was_big = (self.narrow[accounts] == _SPILLED_U32) if len(self.spill_accounts) else None
        self.narrow[accounts] = np.minimum(fen, SPILLED) if any_big else fen
        if any_big or (was_big is not None and was_big.any()):
            self._respill(np.asarray(accounts, dtype=np.int64), fen, big)

    def _respill(self, accounts: np.ndarray, fen: np.ndarray, big: np.ndarray) -> None:
        """Rewrite the side table: ``accounts`` leave it, then those with ``big`` balances enter."""
        keep = ~np.isin(self.spill_accounts, accounts)
        ids = np.concatenate([self.spill_accounts[keep], accounts[big]])
        values = np.concatenate([self.spill_fen[keep], fen[big].astype(np.int64)])
        order = np.argsort(ids, kind="stable")
        self.spill_accounts, self.spill_fen = ids[order], values[order]

    def total_fen(self) -> int:
        """Sum of all balances (exact: uint64 sum of the narrow part, without the sentinels)."""
        narrow = int(self.narrow.sum(dtype=np.uint64)) - SPILLED * len(self.spill_accounts)
        return narrow + sum(self.spill_fen.tolist())  # Python ints: cannot wrap

    def to_int64(self) -> np.ndarray:
        """Every balance as int64 fen (a new array of 8 bytes per account: for tests and small ledgers)."""
        fen = self.narrow.astype(np.int64)
        fen[self.spill_accounts] = self.spill_fen
        return fen
