"""wallet_limits: the e-CNY wallet classes' single-payment, daily and balance caps.

Figures from a 2020 pilot agreement (yuan; docs/design.md): class 1 balance 500k / single 50k /
daily 100k; class 2: 10k / 5k / 10k; class 3: 2k / 2k / 2k; class 4: 1k / 500 / 1k. (The annual
caps are not modelled.) Class 0, institutional (merchant and corporate) wallets, has no caps.
The single cap is an ordinary authorize veto; the daily and balance caps
move with the money, so the ledger checks them in sequence (``SequentialLimits``) and they are
exact within a batch. Days roll over at midnight China Standard Time (UTC+8) of the sequencer's
business clock (``engine.clock``), judged at a batch's start: a batch is within one day. Client
timestamps do not move the day.

Today's spending is one uint32 per account: bits 0-23 the fen spent, bits 24-31 the day it was
spent on (the day number modulo 256). A rollover changes only the current day stamp: a word
stamped with another day reads as 0 spent, so no gigabytes of counters are zeroed while the
sequencer waits. Exactness rests on two bounds, both checked:

* every daily cap is at most 2**24 - 1 fen (167,772 yuan; ``WalletLimitsConfig`` refuses more),
  so a capped account's spending always fits; class 0 has no cap, and its spending saturates at
  2**24 - 1, which no check reads;
* a word's stamp must never alias: each batch also scrubs a slice of the words (two per transfer,
  a sequential pass), zeroing those stamped with another day. A word last written on
  day x is judged correctly on day t if t - x < 256. Every nonzero word was written on or after
  ``_oldest_day``, the start of the last completed pass (a pass visits every word, and a visit
  on a later day zeroes it). So when a batch's day t reaches ``_oldest_day + 256`` (only when a
  simulated day is shorter than a pass: thousands of batches at 1.4e9 accounts, one at 10^4),
  every word is zeroed at once before the batch: exact, because nothing was spent on day t yet.

The cost of the scrub is reported: ``stats()["scrub_max_ns"]`` is the longest the sequencer
waited for it in one batch, ``forced_passes`` how often every word had to be zeroed at once.
"""

from __future__ import annotations

import time

import msgspec
import numpy as np

from engine.accounts import class_of_bits
from engine.chunks import fill_in_chunks
from engine.clock import SequencerClock
from engine.codes import CODE_DTYPE, ResultCode
from engine.hooks.base import Hook, LedgerView, Transfers

FEN_PER_YUAN = 100


#: Daily spending is stored in the low 24 bits of a word, the day stamp in the high 8.
SPENT_BITS = 24
SPENT_MAX_FEN = (1 << SPENT_BITS) - 1
_SPENT_MASK = np.uint32(SPENT_MAX_FEN)
_STAMP_SHIFT = np.uint32(SPENT_BITS)
#: Words scrubbed per transfer of a batch: a pass over N accounts takes N/2 payments (half a
#: simulated day at one payment per account per day) and costs ~3 ns per transfer.
SCRUB_WORDS_PER_TRANSFER = 2
#: Days a day stamp can tell apart (8 bits).
_STAMP_DAYS = 256


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
                top = SPENT_MAX_FEN if name == "daily_yuan" else 2**32 - 1
                if not 0 < v * FEN_PER_YUAN <= top:
                    why = " (daily spending is stored in 24 bits)" if name == "daily_yuan" else ""
                    raise ValueError(f"class_{i}.{name} must be in 1..{top // 100} yuan{why}, got {v}")

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
    state_bytes_per_account = 4
    snapshot_arrays = ("spent_word",)
    snapshot_per_account = ("spent_word",)
    snapshot_scalars = ("day", "rollovers", "forced_passes", "_cursor", "_pass_day", "_oldest_day")

    def __init__(self, config: WalletLimitsConfig | None = None, *, scrub_slice: int | None = None) -> None:
        """``scrub_slice``: words scrubbed per batch (default: ``SCRUB_WORDS_PER_TRANSFER`` per transfer)."""
        if scrub_slice is not None and scrub_slice < 1:
            raise ValueError(f"scrub_slice must be >= 1, got {scrub_slice}")
        self.config = config or WalletLimitsConfig()
        self.single_cap_fen = _per_class(self.config, "single_yuan")
        self.daily_cap_fen = _per_class(self.config, "daily_yuan")
        self.balance_cap_fen = _per_class(self.config, "balance_yuan")
        #: Per account: (day mod 256) << 24 | fen spent that day (see the module docstring).
        self.spent_word = np.zeros(0, dtype=np.uint32)
        self.day: int | None = None
        self.rollovers = 0
        self.scrub_slice = scrub_slice
        self.scrub_max_ns = 0
        self.forced_passes = 0
        self._stamp_word = np.uint32(0)
        self._cursor = 0
        self._pass_day = self._oldest_day = 0
        self._flags = np.zeros(0, dtype=np.uint8)
        self._clock = SequencerClock(0)

    def attach(self, ledger: LedgerView) -> None:
        if ledger.limits is not None:
            raise ValueError("a ledger takes one sequential-limits hook; wallet_limits is listed twice")
        # Zero words are "0 spent" whatever the day, so a fresh array needs no stamps. Written
        # here, not left to np.zeros' lazily mapped pages: at 1.4e9 accounts the first payment
        # into each untouched 2 MiB huge page faulted it in on the sequencer (31 ms stalls, 12 us
        # per transfer in the first 1.4e9-account run).
        self.spent_word = np.empty(ledger.accounts, dtype=np.uint32)
        if not self.resuming:  # resuming: the snapshot's words are read into every page
            fill_in_chunks(ledger.accounts, lambda lo, hi: self.spent_word[lo:hi].fill(0))
        self._flags = ledger.flags
        self._clock = ledger.clock
        ledger.limits = self

    def begin_batch(self, batch: np.ndarray) -> None:
        t0 = time.perf_counter_ns()
        day = self._clock.day(batch)
        if self.day is None:
            self.day = self._pass_day = self._oldest_day = day
        elif day > self.day:
            self.day = day
            self.rollovers += 1
        self._stamp_word = np.uint32((day & 0xFF) << SPENT_BITS)
        if day - self._oldest_day >= _STAMP_DAYS:
            self.forced_passes += 1
            self.spent_word[:] = 0
            self._cursor, self._pass_day, self._oldest_day = 0, day, day
        self._scrub(self.scrub_slice or SCRUB_WORDS_PER_TRANSFER * len(batch), day)
        self.scrub_max_ns = max(self.scrub_max_ns, time.perf_counter_ns() - t0)

    def _scrub(self, count: int, day: int) -> None:
        """Zero the next ``count`` words that are stamped with another day than ``day``."""
        lo = self._cursor
        hi = min(lo + count, len(self.spent_word))
        words = self.spent_word[lo:hi]
        # Another day's stamp <=> the XOR with today's stamp word has a bit set in bits 24-31.
        np.copyto(words, np.uint32(0), where=(words ^ self._stamp_word) > _SPENT_MASK)
        self._cursor = hi
        if hi == len(self.spent_word):
            self._cursor, self._oldest_day, self._pass_day = 0, self._pass_day, day

    def spent_of(self, accounts: np.ndarray) -> np.ndarray:
        words = self.spent_word[accounts]
        today = (words >> _STAMP_SHIFT) == (self._stamp_word >> _STAMP_SHIFT)
        return np.where(today, words & _SPENT_MASK, 0).astype(np.int64)

    def set_spent(self, accounts: np.ndarray, spent_fen: np.ndarray) -> None:
        self.spent_word[accounts] = np.minimum(spent_fen, SPENT_MAX_FEN).astype(np.uint32) | self._stamp_word

    def snapshot_touches_all(self, batch: np.ndarray) -> bool:
        # A rollover changes only the day stamp. The scrub (and a forced reset) writes words
        # outside the batch, but only stale ones, turning "another day's spending" into 0: a word
        # copied before or after that write reads the same (0 spent today) and keeps the stamp
        # invariant of the restored scalars, so a copy-on-update snapshot need not save the array whole.
        return False

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray:
        cap = self.single_cap_fen[class_of_bits(transfers.payer_flags(self._flags))]
        return np.where(transfers.amount_fen > cap, ResultCode.WALLET_SINGLE_LIMIT, 0).astype(CODE_DTYPE)

    def state_bytes(self) -> int:
        return self.spent_word.nbytes

    def stats(self) -> dict[str, int]:
        return {"rollovers": self.rollovers, "scrub_max_ns": self.scrub_max_ns, "forced_passes": self.forced_passes}
