"""Micro-benchmarks: each hook's phases on one batch of 8,192 realistic transfers, 1M accounts.

Outside the default run; run with ``python -m pytest benchmarks -m benchmark --benchmark-enable``.
Each benchmark times one hook phase alone (no ledger checks, no settlement), so the figures are
that hook's own cost per batch; divide by 8,192 for ns per transfer. The naive per-transfer
blacklist is the comparison point for the vectorised one.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.codes import ResultCode
from engine.hooks.audit_chain import AuditChain, AuditChainConfig
from engine.hooks.base import PerTransferHook, Transfers
from engine.hooks.blacklist import Blacklist
from engine.hooks.freeze import Freeze
from engine.hooks.privacy import Privacy
from engine.hooks.social_credit import SocialCredit
from engine.hooks.surveillance_log import SurveillanceLog
from engine.hooks.wallet_limits import WalletLimits
from engine.ledger import FLAG_BLACKLISTED, Ledger
from loadgen.generator.workload import Workload, WorkloadConfig

pytestmark = pytest.mark.benchmark

ACCOUNTS = 1_000_000
BATCH = 8_192


@pytest.fixture(scope="module")
def setup():
    # No deliberately bad transfers: authorize hooks only ever see transfers that passed the
    # ledger's own checks (known accounts, valid amounts), and they are timed here on their own.
    wl = Workload(WorkloadConfig(accounts=ACCOUNTS, invalid_fraction=0, duplicate_fraction=0))
    balance, classes = wl.initial_state()
    hooks = [
        WalletLimits(),
        Blacklist(),
        Freeze(),
        SocialCredit(),
        SurveillanceLog(),
        AuditChain(AuditChainConfig(algorithm="sha256")),
        Privacy(),
    ]
    ledger = Ledger(ACCOUNTS, balance_fen=balance, wallet_class=classes, hooks=hooks)
    batch = wl.batch(BATCH, first_id=0)
    codes = ledger.apply(batch)
    ledger.run_deferred()
    return ledger, batch, codes


def hook(ledger: Ledger, name: str):
    return next(h for h in ledger.hooks if h.name == name)


@pytest.mark.parametrize("name", ["wallet_limits", "blacklist", "freeze", "social_credit"])
def test_authorize(benchmark, setup, name) -> None:
    ledger, batch, _ = setup
    h = hook(ledger, name)
    # A fresh Transfers each round: its columns are built lazily and charged to the first hook.
    benchmark(lambda: h.authorize(Transfers(batch), ledger))


@pytest.mark.parametrize("name", ["social_credit", "surveillance_log", "audit_chain", "privacy"])
def test_observe(benchmark, setup, name) -> None:
    ledger, batch, codes = setup
    benchmark(hook(ledger, name).observe, batch, codes)


def test_audit_chain_blake2b(benchmark, setup) -> None:
    _, batch, codes = setup
    chain = AuditChain(AuditChainConfig(algorithm="blake2b"))
    benchmark(chain.observe, batch, codes)


def test_naive_per_transfer_blacklist(benchmark, setup) -> None:
    ledger, batch, _ = setup
    flags = ledger.flags
    restricted = set(np.flatnonzero(hook(ledger, "blacklist").restricted).tolist())

    def one(t: np.void) -> int:
        listed = flags[int(t["payer"])] & FLAG_BLACKLISTED
        return ResultCode.BLACKLISTED if listed and int(t["category"]) in restricted else 0

    naive = PerTransferHook("naive_blacklist", one)
    vetoes = naive.authorize(Transfers(batch), ledger)
    vectorised = hook(ledger, "blacklist").authorize(Transfers(batch), ledger)
    assert np.array_equal(vetoes, np.zeros(BATCH, np.uint8) if vectorised is None else vectorised)
    benchmark(naive.authorize, Transfers(batch), ledger)
