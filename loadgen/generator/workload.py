"""Seeded synthetic workloads: accounts, their starting state, and streams of transfer batches.

* Accounts, their popularity and their starting state are the engine's ``Population``
  (``engine.population``). Payers and payees follow the same popularity, so money circulates
  instead of draining one way.
* Amounts are log-normal (median ``median_amount_fen``), clipped to ``max_amount_fen``.
* A small share of transfers is deliberately bad (zero/negative/overflowing amounts, unknown
  accounts, self-payments) and a share re-sends an earlier id (duplicates), so error paths run
  in every benchmark.

* Timestamps follow a simulated business clock: ``payments_per_account_per_day`` sets how many
  payments make one simulated day (China's digital payments run at roughly one per resident per
  day). Without it a million-account ledger at 300,000 payments/s would see thousands of payments
  per person per day, and the daily wallet caps would measure that artefact instead of policy.

Everything derives from one seed: the same config gives the same batches, byte for byte.
"""

from __future__ import annotations

import msgspec
import numpy as np

from engine.categories import DEFAULT_MIX
from engine.clock import CLOCK_START_NS
from engine.population import (
    DEFAULT_CLASS_SHARES,
    DEFAULT_MEDIAN_BALANCE_FEN,
    DEFAULT_SEED,
    DEFAULT_SKEW,
    Population,
    PopulationConfig,
)
from engine.records import MAX_TRANSFER_FEN, TRANSFER_DTYPE

__all__ = ["DEFAULT_SEED", "BatchPool", "Workload", "WorkloadConfig", "confine_payers"]


class WorkloadConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parameters of a synthetic workload (all optional; defaults model retail payments)."""

    accounts: int = 1_000_000
    seed: int = DEFAULT_SEED
    skew: float = DEFAULT_SKEW
    median_amount_fen: int = 5_000
    amount_sigma: float = 1.1
    max_amount_fen: int = 5_000_000
    median_balance_fen: int = DEFAULT_MEDIAN_BALANCE_FEN
    invalid_fraction: float = 0.002
    duplicate_fraction: float = 0.001
    #: Share of accounts in wallet classes 0..4, busiest first (see engine.population).
    class_shares: tuple[float, float, float, float, float] = DEFAULT_CLASS_SHARES
    #: Simulated clock: payments per account per simulated day (see module docstring).
    payments_per_account_per_day: float = 1.0
    #: Simulated time of payment 0 (unix ns): 2026-11-22 08:00 China Standard Time, where the
    #: sequencer's clock starts (engine.clock; the ledger's days come from that clock, not from
    #: these timestamps, which are data).
    start_ns: int = CLOCK_START_NS

    def __post_init__(self) -> None:
        self.population()  # validates accounts and class_shares
        if not 0 <= self.invalid_fraction < 1 or not 0 <= self.duplicate_fraction < 1:
            raise ValueError("invalid_fraction and duplicate_fraction must be in [0, 1)")
        if self.payments_per_account_per_day <= 0:
            raise ValueError("payments_per_account_per_day must be > 0")
        if not 0 < self.max_amount_fen <= MAX_TRANSFER_FEN:
            raise ValueError(f"max_amount_fen must be in 1..{MAX_TRANSFER_FEN}")

    def population(self) -> PopulationConfig:
        """The account population this workload pays between."""
        return PopulationConfig(
            accounts=self.accounts,
            seed=self.seed,
            skew=self.skew,
            median_balance_fen=self.median_balance_fen,
            class_shares=self.class_shares,
        )


class Workload:
    """A reproducible stream of batches over ``config.accounts`` accounts."""

    def __init__(self, config: WorkloadConfig | None = None, *, stream: int = 0) -> None:
        self.config = config or WorkloadConfig()
        c = self.config
        self._rng = np.random.default_rng([c.seed, stream])
        self.population = Population(c.population())
        self._cat_values = np.array([int(k) for k in DEFAULT_MIX], dtype=np.uint16)
        self._cat_cdf = np.cumsum(list(DEFAULT_MIX.values()))
        self._cat_cdf /= self._cat_cdf[-1]
        self._recent_ids: np.ndarray = np.zeros(0, dtype=np.int64)

    # ---- accounts ----------------------------------------------------------------------------

    def account_of_rank(self, rank: np.ndarray) -> np.ndarray:
        return self.population.account_of_rank(rank)

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Starting (balance_fen, wallet_class) per account id (the population's)."""
        return self.population.initial_state()

    def _draw_accounts(self, n: int) -> np.ndarray:
        return self.population.draw_accounts(self._rng, n)

    # ---- batches -----------------------------------------------------------------------------

    @property
    def ns_per_payment(self) -> float:
        """Simulated nanoseconds between consecutive payments of the stream."""
        c = self.config
        return 86_400e9 / (c.accounts * c.payments_per_account_per_day)

    def timestamps(self, first_index: int, n: int) -> np.ndarray:
        """Simulated times of payments ``first_index..first_index+n-1`` of the stream."""
        offsets = (np.arange(first_index, first_index + n, dtype=np.float64) * self.ns_per_payment).astype(np.int64)
        return self.config.start_ns + offsets

    def batch(
        self,
        n: int,
        *,
        first_id: int,
        operator: int = 0,
        timestamp_ns: np.ndarray | int | None = None,
        payer_range: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """The next ``n`` transfers, ids ``first_id..first_id+n-1`` except for duplicates.

        Timestamps default to the simulated clock at payment index ``first_id``. ``payer_range``
        (lo, hi) draws payers only from accounts ``lo..hi-1``: the accounts the operator owns
        when the server enforces ownership (``Welcome.owned_from``/``owned_to``).
        """
        c = self.config
        rng = self._rng
        b = np.zeros(n, dtype=TRANSFER_DTYPE)
        payer = self._draw_accounts(n)
        payee = self._draw_accounts(n)
        clash = payer == payee
        payee[clash] = (payee[clash] + 1) % c.accounts
        b["payer"] = payer
        b["payee"] = payee
        if payer_range is not None:
            confine_payers(b, payer_range, c.accounts)
        amount = rng.lognormal(np.log(c.median_amount_fen), c.amount_sigma, n)
        b["amount_fen"] = np.clip(amount, 1, c.max_amount_fen).astype(np.int64)
        b["category"] = self._cat_values[
            np.searchsorted(self._cat_cdf, rng.random(n), side="right").clip(0, len(self._cat_values) - 1)
        ]
        ids = np.arange(first_id, first_id + n, dtype=np.int64)
        b["operator"] = operator
        b["timestamp_ns"] = self.timestamps(first_id, n) if timestamp_ns is None else timestamp_ns
        b["location_cell"] = rng.integers(0, 1 << 20, n, dtype=np.uint32)
        b["device_id"] = rng.integers(0, 1 << 40, n, dtype=np.uint64)

        bad = np.flatnonzero(rng.random(n) < c.invalid_fraction)
        kind = rng.integers(0, 4, len(bad))
        b["amount_fen"][bad[kind == 0]] = 0
        b["amount_fen"][bad[kind == 1]] = -rng.integers(1, 10_000, int((kind == 1).sum()))
        b["amount_fen"][bad[kind == 2]] = MAX_TRANSFER_FEN + 1
        b["payee"][bad[kind == 3]] = np.uint32(c.accounts)  # one past the last account

        if len(self._recent_ids) and c.duplicate_fraction > 0:
            dup = np.flatnonzero(rng.random(n) < c.duplicate_fraction)
            ids[dup] = rng.choice(self._recent_ids, len(dup))
        b["transfer_id"] = ids
        self._recent_ids = ids[-256:].copy()
        return b


def confine_payers(batch: np.ndarray, payer_range: tuple[int, int], accounts: int) -> None:
    """Fold every payer into ``[lo, hi)`` in place (an operator debits only accounts it owns).

    Popularity survives the fold (hot ids stay hot within the range); a payer that lands on its
    payee is moved to the next account, as ``Workload.batch`` does for self-payments.
    """
    lo, hi = payer_range
    if not 0 <= lo < hi <= accounts:
        raise ValueError(f"payer range {payer_range} is not a non-empty range of accounts 0..{accounts - 1}")
    payer = (lo + batch["payer"].astype(np.int64) % (hi - lo)).astype(np.uint32)
    clash = payer == batch["payee"]
    batch["payee"][clash] = (batch["payee"][clash].astype(np.int64) + 1) % accounts
    batch["payer"] = payer


class BatchPool:
    """A fixed set of pre-generated batches replayed as an endless stream with fresh ids.

    Generating a batch costs far more than applying it, so benchmarks generate a pool up front
    and replay it. Each pass advances ids and simulated time by the pool's length, and every
    other pass swaps payer and payee: replaying the same payments one way would drain the same
    payers pass after pass, which no real stream does; reversing them keeps balances near their
    seeded distribution however long the run.
    """

    def __init__(
        self,
        workload: Workload,
        batches: int,
        batch_size: int,
        *,
        operator: int = 0,
        first_id: int = 0,
        payer_range: tuple[int, int] | None = None,
    ) -> None:
        if batches < 1 or batch_size < 1:
            raise ValueError("a batch pool needs at least one batch of at least one transfer")
        self.batches = [
            workload.batch(batch_size, first_id=first_id + i * batch_size, operator=operator, payer_range=payer_range)
            for i in range(batches)
        ]
        self._payer_range = payer_range
        self._accounts = workload.config.accounts
        self._id_step = batches * batch_size
        self._time_step = int(self._id_step * workload.ns_per_payment)
        self._next = 0

    def next(self) -> np.ndarray:
        """The next batch of the stream (the pool's own array, modified in place on reuse)."""
        i = self._next
        self._next += 1
        b = self.batches[i % len(self.batches)]
        if i >= len(self.batches):
            b["transfer_id"] += self._id_step
            b["timestamp_ns"] += self._time_step
            b["payer"], b["payee"] = b["payee"].copy(), b["payer"].copy()
            if self._payer_range is not None:  # the former payee may belong to another operator
                confine_payers(b, self._payer_range, self._accounts)
        return b
