"""Every profile, vectorised Ledger vs the one-at-a-time ReferenceLedger with reference hooks.

Batches: the realistic seeded workload, then adversarial ones aimed at each hook (a near-empty
account debited many times, payment chains, listed payers in restricted categories, frozen
payers and payees, scores crossing the threshold across batches), with runtime blacklist and
freeze changes in between, mirrored on both sides. Codes and balances must match after every
batch; the observers' state (scores, log, chain head, aggregates) must match at the end.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.categories import RESTRICTED_DEFAULT, Category
from engine.codes import ResultCode
from engine.hooks.audit_chain import AuditChain
from engine.hooks.blacklist import Blacklist
from engine.hooks.freeze import Freeze
from engine.hooks.privacy import CATEGORY_COLUMNS, Privacy
from engine.hooks.social_credit import SocialCredit
from engine.hooks.surveillance_log import SurveillanceLog
from engine.ledger import FLAG_BLACKLISTED, FLAG_FROZEN, Ledger
from engine.profiles import build_hooks, profile_names
from engine.records import make_batch
from engine.reference import ReferenceLedger
from engine.reference_hooks import reference_for
from loadgen.generator.workload import Workload, WorkloadConfig

ACCOUNTS = 1_500
RESTRICTED = [int(Category[n]) for n in RESTRICTED_DEFAULT]


def hook_of(ledger: Ledger, cls):
    return next((h for h in ledger.hooks if isinstance(h, cls)), None)


def ref_of(ref: ReferenceLedger, name: str):
    return next((h for h in ref.hooks if h.name == name), None)


class Driver:
    def __init__(self, ledger: Ledger, ref: ReferenceLedger, rng: np.random.Generator, wl: Workload) -> None:
        self.ledger, self.ref, self.rng, self.wl = ledger, ref, rng, wl
        self.next_id = 0
        self.now_ns = wl.config.start_ns

    def apply(self, batch: np.ndarray) -> None:
        codes = self.ledger.apply(batch)
        self.ledger.run_deferred()
        expected = self.ref.apply(batch)
        assert codes.tolist() == expected
        assert self.ledger.balance.tolist() == self.ref.balance
        assert self.ledger.audit().ok

    def batch(self, payer, payee, amount, category=None) -> np.ndarray:
        n = len(payer)
        ids = np.arange(self.next_id, self.next_id + n)
        self.next_id += n
        self.now_ns += 600 * 10**9
        cat = self.rng.choice([int(c) for c in Category], n) if category is None else category
        return make_batch(
            payer,
            payee,
            amount,
            transfer_id=ids,
            category=cat,
            timestamp_ns=self.now_ns,
            location_cell=self.rng.integers(0, 1 << 20, n),
            device_id=self.rng.integers(0, 1 << 40, n),
        )

    def accounts(self, n: int) -> np.ndarray:
        return self.rng.integers(0, ACCOUNTS, n)

    # ---- the batches ----

    def realistic(self, batches: int, size: int) -> None:
        for _ in range(batches):
            b = self.wl.batch(size, first_id=self.next_id)
            self.next_id += size
            self.now_ns = int(b["timestamp_ns"].max())
            self.apply(b)

    def drain(self) -> None:
        poor = int(np.argmin(self.ledger.balance))
        n = 120
        payer = np.where(self.rng.random(n) < 0.7, poor, self.accounts(n))
        payee = np.where(payer == poor, self.accounts(n), poor)
        payee[payee == payer] = (payer[payee == payer] + 1) % ACCOUNTS
        self.apply(self.batch(payer, payee, self.rng.integers(1, 3_000, n)))

    def chain(self) -> None:
        links = self.rng.choice(ACCOUNTS, 40, replace=False)
        amount = int(self.ledger.balance[links[0]]) // 2 + 1
        self.apply(self.batch(links[:-1], links[1:], amount))

    def restricted_spending(self, listed: np.ndarray) -> None:
        n = 200
        payer = self.rng.choice(listed, n) if len(listed) else self.accounts(n)
        payee = self.accounts(n)
        payee[payee == payer] = (payer[payee == payer] + 1) % ACCOUNTS
        category = np.where(self.rng.random(n) < 0.7, self.rng.choice(RESTRICTED, n), int(Category.GROCERIES))
        self.apply(self.batch(payer, payee, self.rng.integers(100, 20_000, n), category))

    def frozen_traffic(self, frozen: np.ndarray) -> None:
        n = 200
        a = self.rng.choice(frozen, n) if len(frozen) else self.accounts(n)
        b = self.accounts(n)
        b[b == a] = (a[b == a] + 1) % ACCOUNTS
        flip = self.rng.random(n) < 0.5
        self.apply(self.batch(np.where(flip, a, b), np.where(flip, b, a), self.rng.integers(100, 5_000, n)))

    def score_crossing(self, people: np.ndarray) -> None:
        # Each person plays games (lowering the score) and buys a flight in the same batch, then
        # flies again in the next batch: the first flight is judged on the old score only.
        for _ in range(3):
            payer = np.repeat(people, 3)
            payee = (payer + 1) % ACCOUNTS
            category = np.tile(
                [int(Category.VIDEO_GAMES), int(Category.AIR_TRAVEL), int(Category.VIDEO_GAMES)], len(people)
            )
            self.apply(self.batch(payer, payee, 100, category))


@pytest.mark.parametrize("profile", profile_names())
def test_profile_matches_reference(profile, seed, rng, request) -> None:
    wl = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=seed))
    balance, classes = wl.initial_state()
    ledger = Ledger(ACCOUNTS, balance_fen=balance, wallet_class=classes, hooks=build_hooks(profile))
    for hook in ledger.hooks:  # the trove's threads and temporary directory end with the test
        request.addfinalizer(hook.close)
    ref = reference_for(ledger)
    d = Driver(ledger, ref, rng, wl)

    bl, fr, sc = hook_of(ledger, Blacklist), hook_of(ledger, Freeze), hook_of(ledger, SocialCredit)
    if sc is not None:  # put a few people just above the threshold, on both sides
        near = rng.choice(ACCOUNTS, 15, replace=False)
        start = sc.config.threshold + rng.integers(0, 12, len(near))
        sc.set_scores(near, start)
        for a, s in zip(near.tolist(), start.tolist(), strict=True):
            ref_of(ref, "social_credit").scores[a] = s
    else:
        near = rng.choice(ACCOUNTS, 15, replace=False)

    d.realistic(6, 800)
    d.drain()
    d.chain()
    listed = np.flatnonzero(ledger.flags & FLAG_BLACKLISTED)
    d.restricted_spending(listed)
    if bl is not None:  # runtime changes, mirrored on the reference
        add, remove = rng.choice(ACCOUNTS, 30, replace=False), listed[: len(listed) // 2]
        bl.add(add)
        bl.remove(remove)
        ref_of(ref, "blacklist").add(add.tolist())
        ref_of(ref, "blacklist").remove(remove.tolist())
        d.restricted_spending(np.flatnonzero(ledger.flags & FLAG_BLACKLISTED))
    if fr is not None:
        victims = rng.choice(ACCOUNTS, 20, replace=False)
        fr.freeze(victims)
        ref_of(ref, "freeze").freeze(victims.tolist())
        d.frozen_traffic(np.flatnonzero(ledger.flags & FLAG_FROZEN))
        fr.unfreeze(victims[:10])
        ref_of(ref, "freeze").unfreeze(victims[:10].tolist())
    d.frozen_traffic(np.flatnonzero(ledger.flags & FLAG_FROZEN))
    d.score_crossing(near)
    d.realistic(2, 500)

    if sc is not None:
        assert sc.score.tolist() == ref_of(ref, "social_credit").scores
        assert sc.vetoed > 0 or profile == "baseline"
    if (log := hook_of(ledger, SurveillanceLog)) is not None:
        rlog = ref_of(ref, "surveillance_log")
        assert log.rows_seen == rlog.seen
        for a in [*rng.choice(ACCOUNTS, 20).tolist(), int(near[0])]:
            assert log.query(a).tolist() == rlog.query(a)
    if (chain := hook_of(ledger, AuditChain)) is not None:
        assert chain.head == ref_of(ref, "audit_chain").head and chain.batches > 10
    if (pv := hook_of(ledger, Privacy)) is not None:
        rpv = ref_of(ref, "privacy")

        def dense(counts: dict) -> list[int]:
            out = [0] * len(pv.accepted)
            for (region, cat), v in counts.items():
                out[region * CATEGORY_COLUMNS + cat] = v
            return out

        assert pv.accepted.tolist() == dense(rpv.accepted)
        assert pv.rejected.tolist() == dense(rpv.rejected)
        assert pv.amount_fen.tolist() == dense(rpv.amount_fen)
        registers = np.zeros_like(pv.registers)
        for (region, cat, index), rank in rpv.registers.items():
            registers[region * CATEGORY_COLUMNS + cat, index] = rank
        assert np.array_equal(pv.registers, registers)
    assert sum(
        ledger.stats.codes[c] for c in (ResultCode.FROZEN, ResultCode.BLACKLISTED, ResultCode.CREDIT_RESTRICTED)
    ) > 0 or profile in (
        "baseline",
        "limits",
        "surveillance",
        "privacy",
        "signed",  # baseline's hooks (none), with signatures required by the server
    )
