"""Seeded synthetic workloads: accounts, their starting state, and streams of transfer batches.

* Accounts, their popularity and their starting state are the engine's ``Population``
  (``engine.population``). Payers and payees follow the same popularity, so money circulates
  instead of draining one way.
* Amounts are log-normal (median ``median_amount_fen``), clipped to ``max_amount_fen``.
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

from engine.behaviours import BehaviourConfig, Planter, labels, planted_ids
from engine.categories import DEFAULT_MIX
from engine.clock import CLOCK_START_NS
from engine.hashing import SeededSelection
from engine.hooks.blacklist import BlacklistConfig
from engine.hooks.wallet_limits import FEN_PER_YUAN, WalletLimitsConfig
from engine.persons import Persons, PersonsConfig, minute_of_day, minutes_apart
from engine.population import (
    DEFAULT_CLASS_SHARES,
    DEFAULT_MEDIAN_BALANCE_FEN,
    DEFAULT_SEED,
    DEFAULT_SKEW,
    Population,
    PopulationConfig,
)
from engine.records import MAX_TRANSFER_FEN, TRANSFER_DTYPE

if TYPE_CHECKING:
    from engine.profiles import Scenario

__all__ = [
    "DEFAULT_SEED",
    "BatchPool",
    "ReplayPool",
    "ScenarioWorkload",
    "Workload",
    "WorkloadConfig",
    "confine_payers",
    "scenario_workload",
]


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
    #: Persons and planted behaviours: the scenario's ``[workload]`` table.
    persons: PersonsConfig = PersonsConfig()
    behaviours: BehaviourConfig = BehaviourConfig()
    #: Who is listed (planted blacklist contacts) and the wallet caps (structuring): the same
    #: settings the server's hooks use, so the planted truth matches what the server enforces.
    blacklist: BlacklistConfig = BlacklistConfig()
    wallet_limits: WalletLimitsConfig = WalletLimitsConfig()

    def __post_init__(self) -> None:
        self.population()  # validates accounts and class_shares
        if not 0 <= self.invalid_fraction < 1 or not 0 <= self.duplicate_fraction < 1:
            raise ValueError("invalid_fraction and duplicate_fraction must be in [0, 1)")
        if self.payments_per_account_per_day <= 0:
            raise ValueError("payments_per_account_per_day must be > 0")
        if not 0 < self.max_amount_fen <= MAX_TRANSFER_FEN:
            raise ValueError(f"max_amount_fen must be in 1..{MAX_TRANSFER_FEN}")
        if self.persons.spending_sigma > self.amount_sigma:
            raise ValueError(
                f"persons.spending_sigma ({self.persons.spending_sigma}) must be <= amount_sigma "
                f"({self.amount_sigma}): the spending level is part of the amounts' spread"
            )

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
        return self.population.account_of_rank(rank)

    @property
    def accounts(self) -> int:
        return self.config.accounts

    def rank_of_account(self, account: np.ndarray) -> np.ndarray:
        """Popularity rank of each account (inverse of ``account_of_rank``)."""
        return self.population.rank_of_account(account)

    def single_cap_fen(self, accounts: np.ndarray) -> np.ndarray:
        """Single-payment cap of each account's wallet class (class 0: class 1's), int64."""
        pop = self.population
        return self._single_cap_fen[pop.class_of_rank(pop.rank_of_account(accounts))]

    def account_of_unit(self, u: np.ndarray) -> np.ndarray:
        """Accounts drawn by the popularity law from uniforms ``u`` in [0, 1) (uint32)."""
        return self.population.account_of_unit(u)

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Starting (balance_fen, wallet_class) per account id (the population's)."""
        return self.population.initial_state()

    def _draw_accounts(self, n: int) -> np.ndarray:
        return self.population.draw_accounts(self._rng, n)

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
        plant: bool = True,
    ) -> np.ndarray:
        """The next ``n`` transfers, ids ``first_id..first_id+n-1`` except for duplicates.

        Timestamps default to the simulated clock at payment index ``first_id``. ``payer_range``
        (lo, hi) draws payers only from accounts ``lo..hi-1``: the accounts the operator owns
        when the server enforces ownership (``Welcome.owned_from``/``owned_to``). ``plant=False``
        leaves the rows whose ids carry a label with their ordinary payment (the stream is
        otherwise the same, draw for draw: planting draws nothing), for ``ReplayPool``.
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

        label = self.planter.plant(b, payer_range) if plant else labels(c.behaviours, c.seed, ids)
        ordinary = label == 0
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


class ScenarioWorkload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a scenario fixes about the generated payments, besides the accounts and the seed.

    Its ``[workload]`` table (persons, planted behaviours), and the blacklist and wallet caps its
    hooks enforce (planted blacklist contacts and structuring follow what the server enforces).
    Every command that generates payments for a scenario (``engine``, ``run``, ``load``,
    ``compare``) builds its ``WorkloadConfig`` from this, so one scenario gives one stream; the
    load config carries it to every gateway process, and result files record it.
    """

    persons: PersonsConfig = PersonsConfig()
    behaviours: BehaviourConfig = BehaviourConfig()
    blacklist: BlacklistConfig = BlacklistConfig()
    wallet_limits: WalletLimitsConfig = WalletLimitsConfig()

    @classmethod
    def of(cls, scenario: Scenario) -> ScenarioWorkload:
        return cls(
            persons=scenario.workload.persons,
            behaviours=scenario.workload.behaviours,
            blacklist=scenario.hooks.blacklist,
            wallet_limits=scenario.hooks.wallet_limits,
        )

    def config(self, **fields: Any) -> WorkloadConfig:
        """The workload config of these settings and ``fields`` (``accounts``, ``seed``...)."""
        return WorkloadConfig(
            persons=self.persons,
            behaviours=self.behaviours,
            blacklist=self.blacklist,
            wallet_limits=self.wallet_limits,
            **fields,
        )


def scenario_workload(scenario: Scenario, **fields: Any) -> WorkloadConfig:
    """A workload config with the scenario's ``[workload]`` people and the hooks' list and caps."""
    return ScenarioWorkload.of(scenario).config(**fields)


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


class ReplayPool:
    """A pool of generated payments replayed as an endless stream; every pass planted by its own ids.

    Generating a payment costs far more than applying or sending it, so benchmarks and gateways
    generate a pool up front and replay it. Stream position ``i`` is row ``i % size`` of pass
    ``i // size``; pass ``p`` carries the pool's ids and simulated times advanced by ``p`` pools,
    and every other pass swaps payer and payee: replaying the same payments one way would drain
    the same payers pass after pass, which no real stream does; reversing them keeps balances near
    their seeded distribution however long the run. With ``payer_range`` (an operator debits only
    its own accounts) a reversed payer is folded into the range, and later forward passes pay that
    folded account, so the pairs still cancel (the replay before issue 16 did the same in place).

    Planted behaviours follow the ids, not the rows. The pool holds every row's *ordinary* payment
    (``Workload.batch(plant=False)``); once per pass, the rows whose ids carry a label in that pass
    (``planted_ids``: per slot, not per id) are planted from those ids and laid over the rows as
    they are taken. So ``engine.behaviours.labels(behaviours, seed, id)`` is the truth for every id
    the stream sends, in every pass, and pass 0 is exactly what ``Workload.batch`` generates in
    chunks of ``chunk`` from ``first_id``. A planted payment is never reversed (a structurer does
    not turn into the payee), and a row planted in one pass is an ordinary payment in the next. A
    duplicate row whose re-sent id is planted in a later pass carries that same planted payment
    (planting is a function of the id), so a label still describes every payment sent under its id.

    Limit: an ordinary payment's payer was chosen for the simulated time the pool was generated at
    (pass 0's timestamps); later passes, and gateways that re-time frames to their schedule, send
    it at other times, so "pays near their usual time" holds for the engine's first pass only
    (places, devices and favourites hold in every pass).
    """

    def __init__(
        self,
        workload: Workload,
        size: int,
        *,
        chunk: int = 1024,
        operator: int = 0,
        first_id: int = 0,
        payer_range: tuple[int, int] | None = None,
    ) -> None:
        if size < 1 or chunk < 1:
            raise ValueError("a replay pool needs at least one transfer, generated in chunks of at least one")
        self.workload = workload
        self.size = size
        self.first_id = first_id
        self._payer_range = payer_range
        forward = np.concatenate(
            [
                workload.batch(
                    min(chunk, size - at),
                    first_id=first_id + at,
                    operator=operator,
                    payer_range=payer_range,
                    plant=False,
                )
                for at in range(0, size, chunk)
            ]
        )
        reverse = _swapped(forward, payer_range, workload.config.accounts)
        # With a payer range, a reversed payment's payer is its payee folded into the range: from
        # pass 2 on, the forward payments pay that folded account, so each pair pays back and forth
        # exactly (paying the original payee would drain the folded one, pass after pass).
        again = forward if payer_range is None else _swapped(reverse, payer_range, workload.config.accounts)
        self._ordinary = (forward, reverse, again)
        # Duplicates: rows that re-send an earlier id instead of carrying first_id + row.
        self._resent = np.flatnonzero(forward["transfer_id"] != first_id + np.arange(size))
        self._time_step_ns = int(size * workload.ns_per_payment)
        self._pass = -1
        self._rows = np.zeros(0, dtype=np.int64)
        self._planted = forward[:0]
        #: Passes the stream has reached (``touched_accounts`` covers them).
        self.passes = 0

    def take(self, position: int, n: int) -> np.ndarray:
        """Stream positions ``position..position+n-1``, within one pass: a new array."""
        p, row = divmod(position, self.size)
        if n < 0 or row + n > self.size:
            raise ValueError(f"positions {position}..{position + n - 1} cross the end of a pass of {self.size}")
        if p != self._pass:
            self._rows, self._planted = self._plant_pass(p)
            self._pass, self.passes = p, max(self.passes, p + 1)
        out = self._ordinary_of(p)[row : row + n].copy()
        if p:
            out["transfer_id"] += p * self.size
            out["timestamp_ns"] += p * self._time_step_ns
        lo, hi = np.searchsorted(self._rows, (row, row + n))
        out[self._rows[lo:hi] - row] = self._planted[lo:hi]
        return out

    def _ordinary_of(self, p: int) -> np.ndarray:
        """The ordinary payments of pass ``p``: as generated, reversed (odd), or forward again."""
        return self._ordinary[0 if p == 0 else 2 - (p & 1)]

    def _plant_pass(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their planted records) of pass ``p``: the rows whose pass-``p`` ids carry a label."""
        c, shift = self.workload.config, p * self.size
        base = self.first_id + shift
        ids, _ = planted_ids(c.behaviours, c.seed, base, base + self.size)
        rows = ids - base
        rows = rows[~np.isin(rows, self._resent)]  # a duplicate there carries another id
        resent_ids = self._ordinary[0]["transfer_id"][self._resent] + shift
        rows = np.union1d(rows, self._resent[labels(c.behaviours, c.seed, resent_ids) != 0])
        planted = self._ordinary_of(p)[rows]  # fancy indexing: a copy
        planted["transfer_id"] += shift
        planted["timestamp_ns"] += p * self._time_step_ns
        self.workload.planter.plant(planted, self._payer_range)
        return rows, planted

    def touched_accounts(self) -> np.ndarray:
        """Every account the stream has named so far (payers and payees, bad ids included; sorted)."""
        named = [r[k] for r in self._ordinary for k in ("payer", "payee")]
        named += [r[k] for p in range(self.passes) for r in self._plant_pass(p)[1:] for k in ("payer", "payee")]
        return np.unique(np.concatenate(named))


def _swapped(records: np.ndarray, payer_range: tuple[int, int] | None, accounts: int) -> np.ndarray:
    """A copy of ``records`` with payer and payee swapped (payers folded into ``payer_range``)."""
    out = records.copy()
    out["payer"], out["payee"] = records["payee"], records["payer"]
    if payer_range is not None:  # the former payees may belong to other operators
        confine_payers(out, payer_range, accounts)
    return out


class BatchPool:
    """A ``ReplayPool`` of ``batches`` x ``batch_size`` transfers, taken a batch at a time.

    Pass 0 is ``batches`` calls of ``Workload.batch(batch_size)``; later passes replay it as
    ``ReplayPool`` says (fresh ids and times, payer and payee swapped every other pass, planted
    behaviours placed by each pass's ids).
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
        self.pool = ReplayPool(
            workload,
            batches * batch_size,
            chunk=batch_size,
            operator=operator,
            first_id=first_id,
            payer_range=payer_range,
        )
        self.batch_size = batch_size
        self._next = 0

    def next(self) -> np.ndarray:
        """The next batch of the stream (a new array)."""
        b = self.pool.take(self._next * self.batch_size, self.batch_size)
        self._next += 1
        return b

    def touched_accounts(self) -> np.ndarray:
        """Every account the batches so far named (``ReplayPool.touched_accounts``)."""
        return self.pool.touched_accounts()
