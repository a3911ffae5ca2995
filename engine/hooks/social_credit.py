"""social_credit: a score per person, moved by what they buy, that restricts what they may buy.

Private scores such as Sesame Credit run from 350 to 950 (docs/design.md); "bad" spending such as
video games lowers a score, paying utilities on time raises it, and a low score can bar a person
from flights, high-speed rail and luxury hotels. This hook closes that loop inside the payment
system:

* ``authorize`` vetoes a restricted category with CREDIT_RESTRICTED when the payer's score, as of
  the start of the batch, is below ``threshold``.
* ``observe`` moves the score of the payer of every *accepted* payment by its category's delta.
  Scores move once per batch: each account's deltas over the batch are summed, then the score is
  clipped to ``[min_score, max_score]``. (Clipping per payment would differ only for an account
  at the edge of the range that both gains and loses within one batch.)

Scores are uint16, 2 bytes per account. Starting scores are a seeded normal distribution, clipped,
drawn per account from (seed, account) (``engine.draws``), so any chunking gives the same scores.
Observe is inline by default, so the next batch sees the new scores: punishment in real time.
"""

from __future__ import annotations

import msgspec
import numpy as np

from engine.accounts import unique_accounts
from engine.categories import RESTRICTED_DEFAULT, category_table, check_names
from engine.chunks import count_where, fill_in_chunks
from engine.codes import ResultCode
from engine.draws import NormalDraws
from engine.hashing import salt
from engine.hooks.base import Hook, LedgerView, Transfers, as_accounts, restricted_veto


class SocialCreditConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min_score: int = 350
    max_score: int = 950
    #: Starting scores: normal(initial_mean, initial_sd), rounded and clipped, drawn with ``seed``.
    initial_mean: float = 650.0
    initial_sd: float = 80.0
    seed: int = 20_260_104
    #: Payers below this score may not pay the ``restricted`` categories.
    threshold: int = 550
    restricted: tuple[str, ...] = RESTRICTED_DEFAULT
    #: Score change per accepted payment, by category name; categories not listed move nothing.
    deltas: dict[str, int] = msgspec.field(
        default_factory=lambda: {"VIDEO_GAMES": -5, "ENTERTAINMENT": -2, "LUXURY_GOODS": -1, "UTILITIES": 3}
    )
    deferred: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_score < self.max_score < 2**16:
            raise ValueError(f"need 0 <= min_score < max_score < 65536, got {self.min_score}, {self.max_score}")
        if not self.min_score <= self.threshold <= self.max_score + 1:
            raise ValueError(f"threshold must be in min_score..max_score + 1, got {self.threshold}")
        if self.initial_sd < 0:
            raise ValueError(f"initial_sd must be >= 0, got {self.initial_sd}")
        check_names(self.restricted, "restricted")
        check_names(self.deltas, "deltas")
        span = self.max_score - self.min_score
        bad = {k: v for k, v in self.deltas.items() if abs(v) > span}
        if bad:
            raise ValueError(f"deltas must be within +-{span} (max_score - min_score), got {bad}")


class SocialCredit(Hook):
    name = "social_credit"
    state_bytes_per_account = 2
    snapshot_arrays = ("score",)
    snapshot_per_account = ("score",)
    snapshot_scalars = ("vetoed", "moves")

    def __init__(self, config: SocialCreditConfig | None = None) -> None:
        self.config = config or SocialCreditConfig()
        self.deferred = self.config.deferred
        self.restricted = category_table(dict.fromkeys(self.config.restricted, 1), np.bool_)
        self.delta = category_table(self.config.deltas, np.int32)
        self.score = np.zeros(0, dtype=np.uint16)
        self.vetoed = 0
        self.moves = 0

    def attach(self, ledger: LedgerView) -> None:
        c = self.config
        self.score = np.empty(ledger.accounts, dtype=np.uint16)
        if self.resuming:  # every score comes from the snapshot
            return
        draws, salt_ = NormalDraws(), salt(c.seed, 1)

        def fill(lo: int, hi: int) -> None:
            z = draws(np.arange(lo, hi, dtype=np.int64), salt_)
            self.score[lo:hi] = np.clip(np.rint(z * c.initial_sd + c.initial_mean), c.min_score, c.max_score)

        fill_in_chunks(ledger.accounts, fill)

    def set_scores(self, accounts: int | np.ndarray | list[int], score: int | np.ndarray) -> None:
        """Set scores directly (an administrative correction), clipped to the range."""
        ids = as_accounts(accounts, len(self.score))
        self.score[ids] = np.clip(score, self.config.min_score, self.config.max_score)

    def lower_scores(self, accounts: np.ndarray, points: int) -> None:
        """Lower each listed account's score by ``points`` per time it is listed, down to min_score."""
        ids, times = np.unique(np.asarray(accounts, dtype=np.int64), return_counts=True)
        lowered = self.score[ids].astype(np.int64) - times * points
        self.score[ids] = np.maximum(lowered, self.config.min_score)

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray | None:
        threshold = self.config.threshold
        codes, vetoed = restricted_veto(
            transfers,
            self.restricted,
            lambda at: self.score[transfers.payer[at]] < threshold,
            ResultCode.CREDIT_RESTRICTED,
        )
        self.vetoed += vetoed
        return codes

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        delta = self.delta[batch["category"]]
        moving = np.flatnonzero((delta != 0) & (codes == ResultCode.OK))
        if len(moving) == 0:
            return
        accounts, inverse = unique_accounts(batch["payer"][moving])
        total = np.zeros(len(accounts), dtype=np.int64)
        np.add.at(total, inverse, delta[moving])
        c = self.config
        self.score[accounts] = np.clip(self.score[accounts].astype(np.int64) + total, c.min_score, c.max_score)
        self.moves += len(moving)

    def state_bytes(self) -> int:
        return self.score.nbytes

    def stats(self) -> dict[str, int]:
        c = self.config
        return {
            "vetoed": self.vetoed,
            "score_moves": self.moves,
            "below_threshold": count_where(self.score, lambda s: s < c.threshold),
        }
