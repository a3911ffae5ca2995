"""The sequencer's business clock: simulated time that advances with the payments sequenced.

Daily wallet caps need days. Wall-clock days would make a benchmark at 300,000 payments/s for a
million people see thousands of payments per person per day, and client timestamps would let
any operator set the day for everyone (one transfer stamped 2262 froze every rollover). So the
day is the sequencer's: the workload's model (``payments_per_account_per_day``: with N accounts
and p payments per account per day, one simulated day is N*p sequenced payments) becomes a
clock that only the sequencer advances. Client timestamps are data, never control.

What counts as a payment sequenced: a transfer that passed the ledger's own checks (a known
operator, a fresh id, a valid amount, two distinct known accounts, a payer the operator holds),
whether a policy hook then vetoed it or it settled. Garbage, duplicates and refused batches do
not move the clock, so an operator cannot spin days forward with invalid frames; it advances the
clock only by the payments it gets sequenced, like every other operator (item 4 of issue 13,
per-operator fair share, bounds that share).

Time of the k-th payment: ``start_ns + k * NS_PER_DAY // payments_per_day`` (integers, exact),
days roll at midnight China Standard Time, judged at a batch's start: a batch is within one day.
The clock value (payments sequenced before a batch) is journalled with each batch and checked on
replay, so a replay that disagrees stops instead of drifting.

``payments_per_day = 0`` is format 1's rule (days from the first record's timestamp), kept only
to replay journals written before the sequencer owned the clock.
"""

from __future__ import annotations

import numpy as np

from engine.simtime import NS_PER_DAY, cst_day

#: Simulated time of payment 0 (unix ns): 2026-11-22 08:00 China Standard Time.
CLOCK_START_NS = 1_795_305_600 * 10**9
#: The workload's default (China's digital payments run at roughly one per resident per day).
DEFAULT_PAYMENTS_PER_ACCOUNT_PER_DAY = 1.0


def payments_per_day(accounts: int, payments_per_account_per_day: float) -> int:
    """Sequenced payments in one simulated day (at least 1)."""
    if payments_per_account_per_day <= 0:
        raise ValueError(f"payments_per_account_per_day must be > 0, got {payments_per_account_per_day}")
    return max(1, round(accounts * payments_per_account_per_day))


class SequencerClock:
    """Simulated business time owned by the sequencer; ``payments`` is its whole state."""

    def __init__(self, payments_per_day: int, start_ns: int = CLOCK_START_NS, payments: int = 0) -> None:
        if payments_per_day < 0:
            raise ValueError(f"payments_per_day must be >= 0 (0 = format 1 timestamp days), got {payments_per_day}")
        self.payments_per_day = payments_per_day
        self.start_ns = start_ns
        self.payments = payments

    @classmethod
    def for_accounts(
        cls, accounts: int, payments_per_account_per_day: float = DEFAULT_PAYMENTS_PER_ACCOUNT_PER_DAY
    ) -> SequencerClock:
        return cls(payments_per_day(accounts, payments_per_account_per_day))

    def now_ns(self) -> int:
        """Simulated time of the next payment."""
        return self.start_ns + self.payments * NS_PER_DAY // max(self.payments_per_day, 1)

    def day(self, batch: np.ndarray) -> int:
        """The day a batch starting now falls in (format 1: its first record's timestamp)."""
        if self.payments_per_day == 0:
            return cst_day(int(batch["timestamp_ns"][0]))
        return cst_day(self.now_ns())

    def advance(self, payments: int) -> None:
        self.payments += payments
