"""freeze: frozen accounts can neither pay nor receive.

The central bank "will likely be able to cut off access to funds" (docs/design.md). Freezes are a bit
(FLAG_FROZEN) of the ledger's per-account ``flags`` column, so they cost no memory of their own;
``freeze`` and ``unfreeze`` take effect from the next batch (policy state is read as of the start
of a batch). A seeded share of accounts can start frozen (``frozen_fraction``; the default 0.1%
is an assumption, not a published figure, so that the check rejects something in every run).
"""

from __future__ import annotations

import msgspec
import numpy as np

from engine.accounts import FLAG_FROZEN
from engine.chunks import count_where
from engine.codes import CODE_DTYPE, ResultCode
from engine.hooks.base import Hook, LedgerView, Transfers, as_accounts
from engine.hooks.blacklist import seeded_flags


class FreezeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Share of accounts frozen at start, drawn with ``seed``.
    frozen_fraction: float = 0.001
    seed: int = 20_260_103

    def __post_init__(self) -> None:
        if not 0 <= self.frozen_fraction <= 1:
            raise ValueError(f"frozen_fraction must be in [0, 1], got {self.frozen_fraction}")


class Freeze(Hook):
    name = "freeze"
    snapshot_arrays = ()  # the frozen bits are the ledger's flags column
    snapshot_scalars = ("_frozen", "vetoed")

    def __init__(self, config: FreezeConfig | None = None) -> None:
        self.config = config or FreezeConfig()
        self._flags = np.zeros(0, dtype=np.uint8)
        self._frozen = 0
        self.vetoed = 0

    def attach(self, ledger: LedgerView) -> None:
        self._flags = ledger.flags
        if self.resuming:  # the frozen bits come with the ledger's flags, the count with the scalars
            return
        self._flags &= ~FLAG_FROZEN
        seeded_flags(self._flags, FLAG_FROZEN, self.config.frozen_fraction, self.config.seed)
        self._frozen = self.frozen()

    def freeze(self, accounts: int | np.ndarray | list[int]) -> None:
        """Freeze ``accounts`` (effective from the next batch)."""
        ids = np.unique(as_accounts(accounts, len(self._flags)))
        # Count changes instead of rescanning every account: admin calls stay O(len(accounts)).
        self._frozen += int(np.count_nonzero((self._flags[ids] & FLAG_FROZEN) == 0))
        self._flags[ids] |= FLAG_FROZEN

    def unfreeze(self, accounts: int | np.ndarray | list[int]) -> None:
        """Unfreeze ``accounts`` (effective from the next batch)."""
        ids = np.unique(as_accounts(accounts, len(self._flags)))
        self._frozen -= int(np.count_nonzero(self._flags[ids] & FLAG_FROZEN))
        self._flags[ids] &= ~FLAG_FROZEN

    def is_frozen(self, account: int) -> bool:
        return bool(self._flags[as_accounts(account, len(self._flags))[0]] & FLAG_FROZEN)

    def frozen(self) -> int:
        """Number of frozen accounts."""
        return count_where(self._flags, lambda f: f & FLAG_FROZEN)

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray | None:
        if self._frozen == 0:
            return None
        flags = self._flags
        hit = ((transfers.payer_flags(flags) | transfers.payee_flags(flags)) & FLAG_FROZEN) != 0
        n = int(np.count_nonzero(hit))
        if n == 0:
            return None
        self.vetoed += n
        return hit.astype(CODE_DTYPE) * CODE_DTYPE.type(ResultCode.FROZEN)

    def stats(self) -> dict[str, int]:
        return {"frozen": self._frozen, "vetoed": self.vetoed}
