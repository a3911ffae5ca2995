"""Seeded synthetic workloads: accounts, their starting state, and streams of transfer batches.

* Popularity is a bounded power law (Zipf-like, exponent ``skew``) over accounts, mapped through
  a fixed pseudo-random bijection so hot accounts are scattered over the id space. Payers and
  payees follow the same popularity, so money circulates instead of draining one way.
* Amounts are log-normal (median ``median_amount_fen``), clipped to ``max_amount_fen``.
* Starting balances scale with an account's popularity (busy accounts hold more) and stay below
  half of the account's wallet-class balance cap; the busiest 0.1% are institutional wallets
  (class 0: merchants and firms), then the next busiest get class 1, and so on.
* A small share of transfers is deliberately bad (zero/negative/overflowing amounts, unknown
  accounts, self-payments) and a share re-sends an earlier id (duplicates), so error paths run
  in every benchmark.

* Payments are people's (``engine.persons``): of ``hour_candidates`` popularity draws, the one
  whose usual time of day is nearest the payment's local time pays; most payments
  come from one of the payer's own devices, in or near their home or work cell, and go to one of
  their favourite payees (themselves drawn by popularity) or to a fresh popularity draw; amounts
  scale with the payer's spending level. Planted, labelled behaviours (``engine.behaviours``)
  replace the rows whose transfer ids carry a label; bad transfers and duplicates never touch
  them, so a label always describes the payment sent under its id.

* Timestamps follow a simulated business clock: ``payments_per_account_per_day`` sets how many
  payments make one simulated day (China's digital payments run at roughly one per resident per
  day). Without it a million-account ledger at 300,000 payments/s would see thousands of payments
  per person per day, and the daily wallet caps would measure that artefact instead of policy.

Everything derives from one seed: the same config gives the same batches, byte for byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from engine.behaviours import BehaviourConfig, Planter
from engine.categories import DEFAULT_MIX
from engine.hashing import SeededSelection
from engine.hooks.blacklist import BlacklistConfig
from engine.hooks.wallet_limits import FEN_PER_YUAN, WalletLimitsConfig
from engine.persons import Persons, PersonsConfig, minute_of_day, minutes_apart
from engine.powerlaw import powerlaw_cdf as _powerlaw_cdf
from engine.powerlaw import powerlaw_inv as _powerlaw_inv
from engine.records import MAX_TRANSFER_FEN, TRANSFER_DTYPE

if TYPE_CHECKING:
    from engine.profiles import Scenario

# Half of each wallet class's balance cap (yuan -> fen): starting balances stay below it.
DEFAULT_SEED = 20_260_101

_CLASS_BALANCE_CEILING_FEN = np.array([0, 250_000, 5_000, 1_000, 500], dtype=np.int64) * 100


class WorkloadConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parameters of a synthetic workload (all optional; defaults model retail payments)."""

    accounts: int = 1_000_000
    seed: int = DEFAULT_SEED
    skew: float = 0.8
    median_amount_fen: int = 5_000
    amount_sigma: float = 1.1
    max_amount_fen: int = 5_000_000
    median_balance_fen: int = 200_000
    invalid_fraction: float = 0.002
    duplicate_fraction: float = 0.001
    #: Share of accounts in wallet classes 0..4, busiest accounts first: class 0 holds the
    #: merchants and firms that receive (and pay) a large share of all payments.
    class_shares: tuple[float, float, float, float, float] = (0.001, 0.049, 0.35, 0.4, 0.2)
    #: Simulated clock: payments per account per simulated day (see module docstring).
    payments_per_account_per_day: float = 1.0
    #: Simulated time of payment 0 (unix ns): 2026-11-22 08:00 China Standard Time.
    start_ns: int = 1_795_305_600 * 10**9
    #: Persons and planted behaviours: the scenario's ``[workload]`` table.
    persons: PersonsConfig = PersonsConfig()
    behaviours: BehaviourConfig = BehaviourConfig()
    #: Who is listed (planted blacklist contacts) and the wallet caps (structuring): the same
    #: settings the server's hooks use, so the planted truth matches what the server enforces.
    blacklist: BlacklistConfig = BlacklistConfig()
    wallet_limits: WalletLimitsConfig = WalletLimitsConfig()

    def __post_init__(self) -> None:
        if self.accounts < 2:
            raise ValueError(f"workload accounts must be >= 2, got {self.accounts}")
        if not 0 <= self.invalid_fraction < 1 or not 0 <= self.duplicate_fraction < 1:
            raise ValueError("invalid_fraction and duplicate_fraction must be in [0, 1)")
        if abs(sum(self.class_shares) - 1) > 1e-9:
            raise ValueError(f"class_shares must sum to 1, got {sum(self.class_shares)}")
        if self.payments_per_account_per_day <= 0:
            raise ValueError("payments_per_account_per_day must be > 0")
        if not 0 < self.max_amount_fen <= MAX_TRANSFER_FEN:
            raise ValueError(f"max_amount_fen must be in 1..{MAX_TRANSFER_FEN}")
        if self.persons.spending_sigma > self.amount_sigma:
            raise ValueError(
                f"persons.spending_sigma ({self.persons.spending_sigma}) must be <= amount_sigma "
                f"({self.amount_sigma}): the spending level is part of the amounts' spread"
            )


class Workload:
    """A reproducible stream of batches over ``config.accounts`` accounts."""

    def __init__(self, config: WorkloadConfig | None = None, *, stream: int = 0) -> None:
        self.config = config or WorkloadConfig()
        c = self.config
        self._rng = np.random.default_rng([c.seed, stream])
        # Bijection rank -> account id: multiplication by a unit modulo N.
        self._mult = _unit_near(c.accounts, int(c.accounts * 0.618_033_988_75) | 1)
        self._offset = (c.seed * 7_919) % c.accounts
        self._cat_values = np.array([int(k) for k in DEFAULT_MIX], dtype=np.uint16)
        self._cat_cdf = np.cumsum(list(DEFAULT_MIX.values()))
        self._cat_cdf /= self._cat_cdf[-1]
        self._recent_ids: np.ndarray = np.zeros(0, dtype=np.int64)
        self._mult_inverse = pow(self._mult, -1, c.accounts)
        self.persons = Persons(c.persons, seed=c.seed)
        caps = [k.single_yuan * FEN_PER_YUAN for k in c.wallet_limits.classes()]
        # Institutional wallets (class 0) have no cap; structuring by them aims at class 1's.
        self._single_cap_fen = np.array([caps[0], *caps], dtype=np.int64)
        self._payment_sigma = float(np.sqrt(c.amount_sigma**2 - c.persons.spending_sigma**2))
        self.planter = Planter(
            c.behaviours,
            seed=c.seed,
            persons=self.persons,
            population=self,
            listed=SeededSelection(c.accounts, c.blacklist.listed_fraction, c.blacklist.seed),
            median_amount_fen=c.median_amount_fen,
            max_amount_fen=c.max_amount_fen,
        )

    # ---- accounts ----------------------------------------------------------------------------

    def account_of_rank(self, rank: np.ndarray) -> np.ndarray:
        return ((rank.astype(np.int64) * self._mult + self._offset) % self.config.accounts).astype(np.uint32)

    @property
    def accounts(self) -> int:
        return self.config.accounts

    def rank_of_account(self, account: np.ndarray) -> np.ndarray:
        """Popularity rank of each account (inverse of ``account_of_rank``)."""
        n = self.config.accounts
        return ((account.astype(np.int64) - self._offset) % n) * self._mult_inverse % n

    def _class_of_rank(self, rank: np.ndarray) -> np.ndarray:
        bounds = np.round(np.cumsum(self.config.class_shares) * self.config.accounts).astype(np.int64)
        return np.searchsorted(bounds, rank, side="right").clip(0, 4).astype(np.uint8)

    def single_cap_fen(self, accounts: np.ndarray) -> np.ndarray:
        """Single-payment cap of each account's wallet class (class 0: class 1's), int64."""
        return self._single_cap_fen[self._class_of_rank(self.rank_of_account(accounts))]

    def account_of_unit(self, u: np.ndarray) -> np.ndarray:
        """Accounts drawn by the popularity law from uniforms ``u`` in [0, 1) (uint32)."""
        s, N = self.config.skew, self.config.accounts
        rank = np.floor(_powerlaw_inv(u, s, N)).astype(np.int64).clip(0, N - 1)
        return self.account_of_rank(rank)

    def _share_of_rank(self, rank: np.ndarray) -> np.ndarray:
        """Probability that a payment involves the account of each rank (continuous power law)."""
        s, n = self.config.skew, self.config.accounts
        cdf = _powerlaw_cdf
        return cdf(rank + 1.0, s, n) - cdf(rank.astype(np.float64), s, n)

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Starting (balance_fen, wallet_class) per account id."""
        c = self.config
        rng = np.random.default_rng([c.seed, 1 << 30])
        rank = np.arange(c.accounts, dtype=np.int64)
        share = self._share_of_rank(rank) * c.accounts  # 1.0 = an average account
        cls_by_rank = self._class_of_rank(rank)
        bal = rng.lognormal(np.log(c.median_balance_fen), 1.0, c.accounts) * np.maximum(share, 0.2)
        bal_by_rank = np.minimum(bal.astype(np.int64), _CLASS_BALANCE_CEILING_FEN[cls_by_rank])
        ids = self.account_of_rank(rank)
        balance = np.empty(c.accounts, dtype=np.int64)
        wallet_class = np.empty(c.accounts, dtype=np.uint8)
        balance[ids] = bal_by_rank
        wallet_class[ids] = cls_by_rank
        return balance, wallet_class

    def _draw_accounts(self, n: int) -> np.ndarray:
        return self.account_of_unit(self._rng.random(n))

    def _draw_payers(self, minute: np.ndarray, payer_range: tuple[int, int] | None) -> np.ndarray:
        """Per payment, the candidate whose usual time of day is nearest the payment's minute."""
        # One candidate column at a time: arrays of one batch stay in cache (4x faster than (n, k)).
        minute = minute.astype(np.int16)
        best = self._draw_payer_candidates(len(minute), payer_range)
        if self.config.persons.hour_candidates == 1:
            return best
        best_apart = minutes_apart(self.persons.usual_minute(best), minute)
        for _ in range(self.config.persons.hour_candidates - 1):
            candidate = self._draw_payer_candidates(len(minute), payer_range)
            apart = minutes_apart(self.persons.usual_minute(candidate), minute)
            best = np.where(apart < best_apart, candidate, best)
            best_apart = np.minimum(apart, best_apart)
        return best

    def _draw_payer_candidates(self, n: int, payer_range: tuple[int, int] | None) -> np.ndarray:
        drawn = self._draw_accounts(n)
        return drawn if payer_range is None else fold_accounts(drawn, payer_range, self.config.accounts)

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
        c, persons = self.config, self.persons
        pc = c.persons
        rng = self._rng
        b = np.zeros(n, dtype=TRANSFER_DTYPE)
        ids = np.arange(first_id, first_id + n, dtype=np.int64)
        b["transfer_id"] = ids
        b["operator"] = operator
        b["timestamp_ns"] = self.timestamps(first_id, n) if timestamp_ns is None else timestamp_ns
        payer = self._draw_payers(minute_of_day(b["timestamp_ns"]), payer_range)
        payee_unit = rng.random(n)
        favourite = np.flatnonzero(rng.random(n) < pc.favourite_share)
        pick = rng.integers(0, max(pc.favourites, 1), len(favourite))
        payee_unit[favourite] = persons.favourite_unit(payer[favourite], pick)
        payee = self.account_of_unit(payee_unit)
        clash = payer == payee
        payee[clash] = (payee[clash] + 1) % c.accounts
        b["payer"] = payer
        b["payee"] = payee
        log_amount = np.log(c.median_amount_fen) + pc.spending_sigma * persons.spending_z(payer)
        amount = np.exp(log_amount + self._payment_sigma * rng.standard_normal(n))
        b["amount_fen"] = np.clip(amount, 1, c.max_amount_fen).astype(np.int64)
        b["category"] = self._cat_values[
            np.searchsorted(self._cat_cdf, rng.random(n), side="right").clip(0, len(self._cat_values) - 1)
        ]
        b["device_id"] = self._devices(payer)
        b["location_cell"] = self._places(payer)

        labels = self.planter.plant(b, payer_range)
        ordinary = labels == 0
        bad = np.flatnonzero((rng.random(n) < c.invalid_fraction) & ordinary)
        kind = rng.integers(0, 4, len(bad))
        b["amount_fen"][bad[kind == 0]] = 0
        b["amount_fen"][bad[kind == 1]] = -rng.integers(1, 10_000, int((kind == 1).sum()))
        b["amount_fen"][bad[kind == 2]] = MAX_TRANSFER_FEN + 1
        b["payee"][bad[kind == 3]] = np.uint32(c.accounts)  # one past the last account

        if len(self._recent_ids) and c.duplicate_fraction > 0:
            dup = np.flatnonzero((rng.random(n) < c.duplicate_fraction) & ordinary)
            ids[dup] = rng.choice(self._recent_ids, len(dup))
        b["transfer_id"] = ids
        # Duplicates re-send ordinary ids only: a planted id always names its planted payment.
        self._recent_ids = ids[ordinary][-256:].copy()
        return b

    def _devices(self, payer: np.ndarray) -> np.ndarray:
        """Mostly one of the payer's own devices; else another person's (a relative's, a till)."""
        n, persons = len(payer), self.persons
        borrowed = np.flatnonzero(self._rng.random(n) >= self.config.persons.own_device_share)
        slot = np.floor(self._rng.random(n) * persons.device_count(payer)).astype(np.int64)
        device = persons.device(payer, slot)
        other = self._draw_accounts(len(borrowed))
        other[other == payer[borrowed]] += 1
        device[borrowed] = persons.device(other % self.config.accounts, 0)
        return device

    def _places(self, payer: np.ndarray) -> np.ndarray:
        """Near home, near work, or elsewhere (travel: never within ``near_cells`` of either)."""
        pc, persons = self.config.persons, self.persons
        n = len(payer)
        u = self._rng.random(n)
        bits = self._rng.bit_generator.random_raw(n)
        home, work = persons.home_and_work(payer)
        cell = persons.near(np.where(u < pc.home_share, home, work), bits)
        away = np.flatnonzero(u >= pc.home_share + pc.work_share)
        if len(away):
            trip = persons.place_in_some_city(bits[away])
            close = (persons.cells_apart(trip, home[away]) <= pc.near_cells) | (
                persons.cells_apart(trip, work[away]) <= pc.near_cells
            )
            half = persons.side // 2
            trip[close] = persons.shifted(trip[close], half, half)
            cell[away] = trip
        return cell


def _unit_near(n: int, start: int) -> int:
    """The first integer >= start coprime with n (a unit of Z/nZ)."""
    import math

    m = max(start, 1)
    while math.gcd(m, n) != 1:
        m += 1
    return m


def scenario_workload(scenario: Scenario, **fields: Any) -> WorkloadConfig:
    """A workload config with the scenario's ``[workload]`` people and the hooks' list and caps."""
    return WorkloadConfig(
        persons=scenario.workload.persons,
        behaviours=scenario.workload.behaviours,
        blacklist=scenario.hooks.blacklist,
        wallet_limits=scenario.hooks.wallet_limits,
        **fields,
    )


def fold_accounts(account: np.ndarray, payer_range: tuple[int, int], accounts: int) -> np.ndarray:
    """``account`` folded into ``[lo, hi)``: hot ids stay hot within the range (uint32)."""
    lo, hi = payer_range
    if not 0 <= lo < hi <= accounts:
        raise ValueError(f"payer range {payer_range} is not a non-empty range of accounts 0..{accounts - 1}")
    return (lo + account.astype(np.int64) % (hi - lo)).astype(np.uint32)


def confine_payers(batch: np.ndarray, payer_range: tuple[int, int], accounts: int) -> None:
    """Fold every payer into ``[lo, hi)`` in place (an operator debits only accounts it owns).

    Popularity survives the fold (hot ids stay hot within the range); a payer that lands on its
    payee is moved to the next account, as ``Workload.batch`` does for self-payments.
    """
    payer = fold_accounts(batch["payer"], payer_range, accounts)
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
