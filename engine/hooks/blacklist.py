"""blacklist: listed payers may not pay restricted categories (court "dishonest debtor" list).

About 30 million people are on the court list (docs/design.md), some 2% of residents; they may not buy
flights, high-speed rail tickets, luxury hotel stays and the like. The default lists a seeded 2%
of accounts. The list lives in the ledger's per-account ``flags`` column (bit FLAG_BLACKLISTED),
so it costs no memory of its own; ``add`` and ``remove`` change it between batches at runtime.
Only payers are checked: being paid is not restricted.
"""

from __future__ import annotations

import msgspec
import numpy as np

from engine.accounts import FLAG_BLACKLISTED
from engine.categories import RESTRICTED_DEFAULT, category_table, check_names
from engine.chunks import count_where
from engine.codes import ResultCode
from engine.hashing import SeededSelection
from engine.hooks.base import Hook, LedgerView, Transfers, as_accounts, restricted_veto

#: Selected accounts computed per step (bounds the temporary arrays: 4M int64 = 32 MB).
_SELECT_CHUNK = 1 << 22


class BlacklistConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Share of accounts listed at start (exactly, rounded), chosen with ``seed``.
    listed_fraction: float = 0.02
    seed: int = 20_260_102
    #: Category names (engine.categories.Category) that listed payers may not pay.
    restricted: tuple[str, ...] = RESTRICTED_DEFAULT

    def __post_init__(self) -> None:
        if not 0 <= self.listed_fraction <= 1:
            raise ValueError(f"listed_fraction must be in [0, 1], got {self.listed_fraction}")
        check_names(self.restricted, "restricted")


def seeded_flags(flags: np.ndarray, bit: np.uint8, fraction: float, seed: int) -> None:
    """Set ``bit`` on exactly ``round(fraction * len(flags))`` accounts chosen by ``seed``.

    The choice is ``SeededSelection``: anyone (the workload planting payments by listed people, a
    test) can tell who is selected from (seed, fraction, accounts) without this array, and only
    the selected accounts are computed (2% of 1.4e9 is 28M permutation evaluations).
    """
    if fraction <= 0 or not len(flags):
        return
    selection = SeededSelection(len(flags), fraction, seed)
    for start in range(0, selection.count, _SELECT_CHUNK):
        flags[selection.member(np.arange(start, min(start + _SELECT_CHUNK, selection.count)))] |= bit


class Blacklist(Hook):
    name = "blacklist"
    snapshot_arrays = ()  # the listed bits are the ledger's flags column
    snapshot_scalars = ("vetoed",)

    def __init__(self, config: BlacklistConfig | None = None) -> None:
        self.config = config or BlacklistConfig()
        self.restricted = category_table(dict.fromkeys(self.config.restricted, 1), np.bool_)
        self._flags = np.zeros(0, dtype=np.uint8)
        self.vetoed = 0

    def attach(self, ledger: LedgerView) -> None:
        self._flags = ledger.flags
        if self.resuming:  # the listed bits come with the ledger's flags from the snapshot
            return
        self._flags &= ~FLAG_BLACKLISTED
        seeded_flags(self._flags, FLAG_BLACKLISTED, self.config.listed_fraction, self.config.seed)

    def add(self, accounts: int | np.ndarray | list[int]) -> None:
        """List ``accounts`` (effective from the next batch)."""
        self._flags[as_accounts(accounts, len(self._flags))] |= FLAG_BLACKLISTED

    def remove(self, accounts: int | np.ndarray | list[int]) -> None:
        """Take ``accounts`` off the list (effective from the next batch)."""
        self._flags[as_accounts(accounts, len(self._flags))] &= ~FLAG_BLACKLISTED

    def is_listed(self, account: int) -> bool:
        return bool(self._flags[as_accounts(account, len(self._flags))[0]] & FLAG_BLACKLISTED)

    def listed(self) -> int:
        """Number of accounts on the list."""
        return count_where(self._flags, lambda f: f & FLAG_BLACKLISTED)

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray | None:
        codes, vetoed = restricted_veto(
            transfers,
            self.restricted,
            lambda at: (transfers.payer_flags_at(self._flags, at) & FLAG_BLACKLISTED) != 0,
            ResultCode.BLACKLISTED,
        )
        self.vetoed += vetoed
        return codes

    def stats(self) -> dict[str, int]:
        return {"listed": self.listed(), "vetoed": self.vetoed}
