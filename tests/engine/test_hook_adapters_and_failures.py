"""A hook that raises, and the per-transfer adapter against the vectorised hooks."""

from __future__ import annotations

import numpy as np
import pytest

from engine.codes import ResultCode
from engine.hooks.audit_chain import AuditChain, AuditChainConfig
from engine.hooks.base import PerTransferHook
from engine.hooks.blacklist import Blacklist
from engine.hooks.freeze import Freeze
from engine.hooks.social_credit import SocialCredit
from engine.ledger import FLAG_BLACKLISTED, FLAG_FROZEN, Ledger
from engine.reference import ReferenceLedger
from engine.reference_hooks import RefAuditChain
from loadgen.generator.workload import Workload, WorkloadConfig
from tests.support.hooks import FailingHook

ACCOUNTS = 2_000


def workload_ledger(seed: int, hooks) -> tuple[Ledger, Workload]:
    wl = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=seed))
    balance, classes = wl.initial_state()
    return Ledger(ACCOUNTS, balance_fen=balance, wallet_class=classes, hooks=hooks), wl


@pytest.mark.parametrize("phase", ["begin", "authorize"])
def test_hook_raising_before_commit_refuses_the_batch_and_changes_nothing(seed, phase) -> None:
    bad = FailingHook(phase=phase, fail_on=[2])
    chain = AuditChain(AuditChainConfig(deferred=False))
    ledger, wl = workload_ledger(seed, [bad, chain])
    ref = ReferenceLedger(ledger.balance.tolist(), ledger.wallet_class.tolist())
    first, second = wl.batch(500, first_id=0), wl.batch(500, first_id=500)
    assert ledger.apply(first).tolist() == ref.apply(first)
    balance, head = ledger.balance.copy(), chain.head

    codes = ledger.apply(second)
    assert (codes == ResultCode.HOOK_ERROR).all()
    assert np.array_equal(ledger.balance, balance) and ledger.audit().ok
    assert chain.head == head and bad.observed == 1  # a refused batch is not observed
    timing = ledger.hook_timing["failing"]
    assert timing.errors == 1 and f"{phase}: RuntimeError: injected failure in {phase}" == timing.last_error
    assert ledger.stats.refused_batches == 1

    # No id was consumed: the same batch, resubmitted, is applied as if the first try never was.
    assert ledger.apply(second).tolist() == ref.apply(second)
    assert ledger.balance.tolist() == ref.balance


def test_hook_raising_in_observe_is_counted_and_the_batch_stands(seed) -> None:
    bad = FailingHook(phase="observe")
    chain = AuditChain(AuditChainConfig(deferred=True))
    ledger, wl = workload_ledger(seed, [bad, chain])
    ref = ReferenceLedger(ledger.balance.tolist(), ledger.wallet_class.tolist(), hooks=[RefAuditChain("sha256", 64)])
    for i in range(3):
        b = wl.batch(400, first_id=i * 400)
        assert ledger.apply(b).tolist() == ref.apply(b)
        ledger.run_deferred()
    assert ledger.balance.tolist() == ref.balance
    assert ledger.hook_timing["failing"].errors == 3 and ledger.stats.refused_batches == 0
    assert chain.head == ref.hooks[0].head  # the other observers still ran


def test_per_transfer_adapter_gives_the_same_codes_as_the_vectorised_hooks(seed) -> None:
    vectorised, wl = workload_ledger(seed, [Blacklist(), Freeze(), SocialCredit()])
    flags = vectorised.flags.copy()
    scores = vectorised.hooks[2].score.copy()
    sc_config = vectorised.hooks[2].config
    restricted = set(np.flatnonzero(vectorised.hooks[0].restricted).tolist())
    deltas = {int(k): v for k, v in enumerate(vectorised.hooks[2].delta.tolist()) if v}

    def authorize(t: np.void) -> int:
        payer, payee, category = int(t["payer"]), int(t["payee"]), int(t["category"])
        # One code per transfer, so the naive hook answers in the precedence order (codes-3:
        # the policy vetoes of the payer first; FROZEN is late, after the settlement checks).
        if category in restricted and flags[payer] & FLAG_BLACKLISTED:
            return ResultCode.BLACKLISTED
        if category in restricted and scores[payer] < sc_config.threshold:
            return ResultCode.CREDIT_RESTRICTED
        if (flags[payer] | flags[payee]) & FLAG_FROZEN:
            return ResultCode.FROZEN
        return 0

    pending: dict[int, int] = {}

    def observe(t: np.void, code: int) -> None:
        if code == ResultCode.OK and int(t["category"]) in deltas:
            pending[int(t["payer"])] = pending.get(int(t["payer"]), 0) + deltas[int(t["category"])]

    naive_hook = PerTransferHook("naive", authorize, observe)
    balance, classes = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=seed)).initial_state()
    naive = Ledger(ACCOUNTS, balance_fen=balance, wallet_class=classes, hooks=[naive_hook])
    for i in range(8):
        b = wl.batch(1_000, first_id=i * 1_000)
        assert vectorised.apply(b).tolist() == naive.apply(b).tolist()
        for account, total in pending.items():
            scores[account] = min(max(int(scores[account]) + total, 350), 950)
        pending.clear()
    assert np.array_equal(scores, vectorised.hooks[2].score)
    assert vectorised.stats.codes[ResultCode.CREDIT_RESTRICTED] > 0
