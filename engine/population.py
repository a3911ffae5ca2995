"""The seeded account population: who is busy, what each account holds, its wallet class.

The ledger's starting state belongs to the domain, not to the load tool (TigerBeetle keeps its
workload beside the state machine): the server builds its ledger from a ``Population``, and the
load generator (``loadgen.generator.workload``) draws its payers and payees from the same one.

* Popularity is a bounded power law (Zipf-like, exponent ``skew``) over accounts, mapped through
  a fixed pseudo-random bijection so hot accounts are scattered over the id space.
* Starting balances scale with an account's popularity (busy accounts hold more) and stay below
  half of the account's wallet-class balance cap; the busiest 0.1% are institutional wallets
  (class 0: merchants and firms), then the next busiest get class 1, and so on.

Everything derives from ``seed``: the same config gives the same state, byte for byte.

The state is built in chunks of account ids straight into the ledger's final arrays (uint32
balances, one byte of wallet class and flags: docs/design.md "Per-account state"), on two threads
(``engine.chunks``); each account's balance is a counter-based draw keyed by its rank
(``engine.draws``), so the bytes do not depend on the chunk size or the number of workers.

``POPULATION_VERSION`` names the rule that maps (config) to state; result files and journal
headers record it, and journals also record ``state_sha256`` (a digest of sampled starting state),
so a journal never replays into a ledger seeded differently (``engine.journal.JournalHeader``):

* 1: one sequential generator over all ranks (int64 temporaries of ~48 bytes per account).
* 2: balances from hashed normal draws keyed by rank, built in chunks (this module).
"""

from __future__ import annotations

import hashlib
import math

import msgspec
import numpy as np

from engine.accounts import CLASS_SHIFT
from engine.chunks import DEFAULT_CHUNK, DEFAULT_WORKERS, Progress, fill_in_chunks
from engine.draws import NormalDraws
from engine.hashing import below, hash64, salt
from engine.powerlaw import powerlaw_cdf, powerlaw_inv

#: The rule that maps a config to state (history in the module docstring).
POPULATION_VERSION = 2
DEFAULT_SEED = 20_260_101
#: Salt purposes of the starting-balance draws and of the accounts ``state_sha256`` samples.
_BALANCE_DRAW = 1 << 30
_STATE_SAMPLE = (1 << 30) + 1
#: Accounts whose starting state ``state_sha256`` digests: any change to the rule or its constants
#: changes nearly every account's balance, so a few thousand see it (and cost ~1 ms at any size).
STATE_SAMPLE_ACCOUNTS = 4_096
DEFAULT_SKEW = 0.8
DEFAULT_MEDIAN_BALANCE_FEN = 200_000
#: Share of accounts in wallet classes 0..4, busiest accounts first: class 0 holds the
#: merchants and firms that receive (and pay) a large share of all payments.
DEFAULT_CLASS_SHARES: tuple[float, float, float, float, float] = (0.001, 0.049, 0.35, 0.4, 0.2)

# Half of each wallet class's balance cap (yuan -> fen): starting balances stay below it.
_CLASS_BALANCE_CEILING_FEN = np.array([0, 250_000, 5_000, 1_000, 500], dtype=np.int64) * 100


class PopulationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parameters of the account population (defaults model retail payments)."""

    accounts: int = 1_000_000
    seed: int = DEFAULT_SEED
    skew: float = DEFAULT_SKEW
    median_balance_fen: int = DEFAULT_MEDIAN_BALANCE_FEN
    class_shares: tuple[float, float, float, float, float] = DEFAULT_CLASS_SHARES

    def __post_init__(self) -> None:
        if self.accounts < 2:
            raise ValueError(f"population accounts must be >= 2, got {self.accounts}")
        if abs(sum(self.class_shares) - 1) > 1e-9:
            raise ValueError(f"class_shares must sum to 1, got {sum(self.class_shares)}")


class Population:
    """``config.accounts`` accounts: their popularity and their seeded starting state."""

    def __init__(self, config: PopulationConfig | None = None) -> None:
        self.config = config or PopulationConfig()
        c = self.config
        # Bijection rank -> account id: multiplication by a unit modulo N.
        self._mult = _unit_near(c.accounts, int(c.accounts * 0.618_033_988_75) | 1)
        self._offset = (c.seed * 7_919) % c.accounts
        self._mult_inverse = pow(self._mult, -1, c.accounts)
        self._class_bounds = np.round(np.cumsum(c.class_shares) * c.accounts).astype(np.int64)

    @property
    def accounts(self) -> int:
        return self.config.accounts

    def account_of_rank(self, rank: np.ndarray) -> np.ndarray:
        """Account ids of popularity ranks (rank 0 = the busiest account)."""
        return ((rank.astype(np.int64) * self._mult + self._offset) % self.config.accounts).astype(np.uint32)

    def rank_of_account(self, account: np.ndarray) -> np.ndarray:
        """Popularity rank of each account (inverse of ``account_of_rank``)."""
        n = self.config.accounts
        return ((account.astype(np.int64) - self._offset) % n) * self._mult_inverse % n

    def class_of_rank(self, rank: np.ndarray) -> np.ndarray:
        """Wallet class of each popularity rank (busiest first: class 0, then 1, ...)."""
        return np.searchsorted(self._class_bounds, rank, side="right").clip(0, 4).astype(np.uint8)

    def account_of_unit(self, u: np.ndarray) -> np.ndarray:
        """Accounts drawn by the popularity law from uniforms ``u`` in [0, 1) (uint32)."""
        s, n = self.config.skew, self.config.accounts
        rank = np.floor(powerlaw_inv(u, s, n)).astype(np.int64).clip(0, n - 1)
        return self.account_of_rank(rank)

    def share_of_rank(self, rank: np.ndarray) -> np.ndarray:
        """Probability that a payment involves the account of each rank (continuous power law)."""
        s, n = self.config.skew, self.config.accounts
        return powerlaw_cdf(rank + 1.0, s, n) - powerlaw_cdf(rank.astype(np.float64), s, n)

    def draw_accounts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` accounts drawn by popularity."""
        return self.account_of_unit(rng.random(n))

    def build_state(
        self,
        *,
        chunk: int = DEFAULT_CHUNK,
        workers: int = DEFAULT_WORKERS,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Starting (balance_fen as uint32, account byte as uint8: wallet class << 5) per account id.

        The two arrays are the only per-account allocations (5 bytes per account); the ledger
        adopts them without copying. Every starting balance is below half of its class's cap,
        so below 2**31: uint32 holds it exactly.
        """
        n = self.config.accounts
        balance = np.empty(n, dtype=np.uint32)
        bits = np.empty(n, dtype=np.uint8)
        draws = NormalDraws()
        fill_in_chunks(
            n, lambda lo, hi: self._fill(lo, hi, balance, bits, draws), chunk=chunk, workers=workers, progress=progress
        )
        return balance, bits

    def _fill(self, lo: int, hi: int, balance: np.ndarray, bits: np.ndarray, draws: NormalDraws) -> None:
        balance[lo:hi], bits[lo:hi] = self._initial_of(np.arange(lo, hi, dtype=np.int64), draws)

    def _initial_of(self, accounts: np.ndarray, draws: NormalDraws) -> tuple[np.ndarray, np.ndarray]:
        """Starting balance (float64 fen, truncated when stored) and account byte of ``accounts``."""
        c = self.config
        rank = self.rank_of_account(accounts)
        share = self.share_of_rank(rank) * c.accounts  # 1.0 = an average account
        cls = self.class_of_rank(rank)
        z = draws(rank, salt(c.seed, _BALANCE_DRAW))
        fen = np.exp(z + np.log(c.median_balance_fen)) * np.maximum(share, 0.2)
        return np.minimum(fen, _CLASS_BALANCE_CEILING_FEN[cls]), cls << CLASS_SHIFT

    def state_sha256(self) -> str:
        """SHA-256 of the config and the starting state of ``STATE_SAMPLE_ACCOUNTS`` hashed accounts.

        Journals record it beside ``POPULATION_VERSION``: the version names the rule, the digest
        checks its result, so a changed constant or rule that nobody versioned still refuses a
        journal written before it instead of replaying it into a different ledger.
        """
        c = self.config
        ids = np.unique(below(hash64(np.arange(STATE_SAMPLE_ACCOUNTS), salt(c.seed, _STATE_SAMPLE)), c.accounts))
        fen, bits = self._initial_of(ids, NormalDraws())
        digest = hashlib.sha256(msgspec.json.encode(c))
        for part in (ids, fen.astype(np.uint32), bits.astype(np.uint8)):  # as build_state stores them
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()

    def reset_accounts(self, balance: np.ndarray, bits: np.ndarray, accounts: np.ndarray) -> None:
        """Put ``accounts`` of arrays from ``build_state`` back to their starting state.

        Each account's starting state is a function of its id, so a benchmark that built the
        arrays once restores the accounts a trial touched instead of rebuilding all of them.
        """
        ids = np.asarray(accounts, dtype=np.int64)
        balance[ids], bits[ids] = self._initial_of(ids, NormalDraws())

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Starting (balance_fen as int64, wallet_class as uint8) per account id (for small ledgers)."""
        balance, bits = self.build_state()
        return balance.astype(np.int64), bits >> CLASS_SHIFT


def _unit_near(n: int, start: int) -> int:
    """The first integer >= start coprime with n (a unit of Z/nZ)."""
    m = max(start, 1)
    while math.gcd(m, n) != 1:
        m += 1
    return m
