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
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from engine.powerlaw import powerlaw_cdf, powerlaw_inv

DEFAULT_SEED = 20_260_101
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

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Starting (balance_fen, wallet_class) per account id."""
        c = self.config
        rng = np.random.default_rng([c.seed, 1 << 30])
        rank = np.arange(c.accounts, dtype=np.int64)
        share = self.share_of_rank(rank) * c.accounts  # 1.0 = an average account
        cls_by_rank = self.class_of_rank(rank)
        bal = rng.lognormal(np.log(c.median_balance_fen), 1.0, c.accounts) * np.maximum(share, 0.2)
        bal_by_rank = np.minimum(bal.astype(np.int64), _CLASS_BALANCE_CEILING_FEN[cls_by_rank])
        ids = self.account_of_rank(rank)
        balance = np.empty(c.accounts, dtype=np.int64)
        wallet_class = np.empty(c.accounts, dtype=np.uint8)
        balance[ids] = bal_by_rank
        wallet_class[ids] = cls_by_rank
        return balance, wallet_class


def _unit_near(n: int, start: int) -> int:
    """The first integer >= start coprime with n (a unit of Z/nZ)."""
    m = max(start, 1)
    while math.gcd(m, n) != 1:
        m += 1
    return m
