"""wallet_limits: the e-CNY wallet classes' single-payment, daily and balance caps.

Figures from a 2020 pilot agreement (yuan; docs/design.md): class 1 balance 500k / single 50k /
daily 100k; class 2: 10k / 5k / 10k; class 3: 2k / 2k / 2k; class 4: 1k / 500 / 1k. (The annual
caps are not modelled.) Class 0, institutional (merchant and corporate) wallets, has no caps.
The single cap is an ordinary authorize veto; the daily and balance caps
move with the money, so the ledger checks them in sequence (``SequentialLimits``) and they are
exact within a batch. Days roll over at midnight China Standard Time (UTC+8) of the sequencer's
business clock (``engine.clock``), judged at a batch's start: a batch is within one day. Client
timestamps do not move the day.
"""

from __future__ import annotations

import msgspec
import numpy as np

from engine.clock import SequencerClock
from engine.codes import CODE_DTYPE, ResultCode
from engine.hooks.base import Hook, LedgerView, Transfers

FEN_PER_YUAN = 100


class ClassCaps(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Caps of one wallet class, in yuan."""

    balance_yuan: int
    single_yuan: int
    daily_yuan: int


class WalletLimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    class_1: ClassCaps = ClassCaps(500_000, 50_000, 100_000)
    class_2: ClassCaps = ClassCaps(10_000, 5_000, 10_000)
    class_3: ClassCaps = ClassCaps(2_000, 2_000, 2_000)
    class_4: ClassCaps = ClassCaps(1_000, 500, 1_000)

    def __post_init__(self) -> None:
        for i, c in enumerate(self.classes(), start=1):
            for name in ("balance_yuan", "single_yuan", "daily_yuan"):
                v = getattr(c, name)
                if not 0 < v * FEN_PER_YUAN < 2**32:
                    raise ValueError(f"class_{i}.{name} must be in 1..{(2**32 - 1) // 100} yuan, got {v}")

    def classes(self) -> tuple[ClassCaps, ...]:
        return (self.class_1, self.class_2, self.class_3, self.class_4)


#: The "cap" of institutional wallets (class 0): above any reachable amount, balance or day's
#: spending (the ledger bounds supply and batch size so that no sum it compares can overflow).
NO_CAP_FEN = 2**63 - 1


def _per_class(config: WalletLimitsConfig, name: str) -> np.ndarray:
    caps = [getattr(c, name) * FEN_PER_YUAN for c in config.classes()]
    return np.array([NO_CAP_FEN, *caps], dtype=np.int64)


class WalletLimits(Hook):
    name = "wallet_limits"
    snapshot_arrays = ("daily_spent_fen",)
    snapshot_per_account = ("daily_spent_fen",)
    snapshot_scalars = ("day", "rollovers")

    def __init__(self, config: WalletLimitsConfig | None = None) -> None:
        self.config = config or WalletLimitsConfig()
        self.single_cap_fen = _per_class(self.config, "single_yuan")
        self.daily_cap_fen = _per_class(self.config, "daily_yuan")
        self.balance_cap_fen = _per_class(self.config, "balance_yuan")
        self.daily_spent_fen = np.zeros(0, dtype=np.uint32)
        self.day: int | None = None
        self.rollovers = 0
        self._wallet_class = np.zeros(0, dtype=np.uint8)
        self._clock = SequencerClock(0)

    def attach(self, ledger: LedgerView) -> None:
        if ledger.limits is not None:
            raise ValueError("a ledger takes one sequential-limits hook; wallet_limits is listed twice")
        self.daily_spent_fen = np.zeros(ledger.accounts, dtype=np.uint32)
        self._wallet_class = ledger.wallet_class
        self._clock = ledger.clock
        ledger.limits = self

    def begin_batch(self, batch: np.ndarray) -> None:
        day = self._clock.day(batch)
        if self.day is None:
            self.day = day
        elif day > self.day:
            self.daily_spent_fen[:] = 0
            self.day = day
            self.rollovers += 1

    def snapshot_touches_all(self, batch: np.ndarray) -> bool:
        return self.day is not None and self._clock.day(batch) > self.day  # begin_batch will reset every account

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray:
        cap = self.single_cap_fen[self._wallet_class[transfers.payer]]
        return np.where(transfers.amount_fen > cap, ResultCode.WALLET_SINGLE_LIMIT, 0).astype(CODE_DTYPE)

    def state_bytes(self) -> int:
        return self.daily_spent_fen.nbytes

    def stats(self) -> dict[str, int]:
        return {"rollovers": self.rollovers}
