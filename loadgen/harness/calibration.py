"""The CPU calibration score every result records (``Environment.calibration``).

A fixed single-core engine run, the same on every machine: the ledger alone (profile
``baseline``), 100,000 accounts, batches of 8,192, 0.1 s of warm-up and 0.3 s measured (about
0.6 s with set-up). The ledger's ``apply`` is numpy on one core, so the score follows what the
server's sequencer can do on this CPU; a run's throughput divided by its file's score compares
across machines (the ratio is the figure, not either number alone). Taken once per ``run`` or
``load`` before the load starts, once per ``compare`` (all its phases share it). On a busy
machine the score drops with everything else: that is the point of recording it.
"""

from __future__ import annotations

import msgspec

from engine.signing import ed25519_verify_rate
from loadgen.harness.engine_run import run_engine
from loadgen.results.environment import Calibration

CALIBRATION_ACCOUNTS = 100_000
CALIBRATION_BATCH = 8192
CALIBRATION_SECONDS = 0.3
CALIBRATION_WARMUP_S = 0.1
#: ``Calibration.rates`` name of the Ed25519 rate (verifications per CPU second, one core).
ED25519_RATE = "ed25519_verify_per_cpu_s"


def cpu_calibration() -> Calibration:
    """Run the fixed calibration workload; its transfers per second of ledger time."""
    r = run_engine(
        accounts=CALIBRATION_ACCOUNTS,
        profile="baseline",
        batch=CALIBRATION_BATCH,
        seconds=CALIBRATION_SECONDS,
        warmup=CALIBRATION_WARMUP_S,
        pool=4,
    )
    return Calibration(engine_tps=r.transfers_per_s, accounts=r.accounts, batch=r.batch, seconds=r.seconds)


def with_ed25519(calibration: Calibration, seconds: float | None = None) -> Calibration:
    """``calibration`` with the Ed25519 verification rate (``engine.signing.ed25519_verify_rate``,
    ~0.25 s) in its ``rates``, for signed runs: their throughput is bound by verification, so it
    compares across machines against this, as unsigned runs do against ``engine_tps``. Given
    ``seconds``, measured anew for that long even if it has one (a calibration per trial)."""
    if seconds is None and ED25519_RATE in calibration.rates:
        return calibration
    rate = ed25519_verify_rate() if seconds is None else ed25519_verify_rate(seconds)
    return msgspec.structs.replace(calibration, rates={**calibration.rates, ED25519_RATE: rate})
