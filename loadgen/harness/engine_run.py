"""The in-process engine run: a ledger with a profile's hooks, driven by pre-generated batches.

Batches are generated up front (outside the timed region) and replayed by a ``BatchPool``; only
``Ledger.apply`` and the deferred observers are timed, and the warm-up is run and discarded.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from engine.chunks import TtyProgress
from engine.clock import SequencerClock
from engine.codes import name_counts
from engine.ledger import Ledger
from engine.memory import check_accounts_fit, peak_rss_bytes
from engine.population import POPULATION_VERSION
from engine.profiles import build_hooks, load_scenario
from loadgen.generator.workload import DEFAULT_SEED, BatchPool, Workload, scenario_workload
from loadgen.results.environment import collect
from loadgen.results.run import SCHEMA_VERSION, write_new
from loadgen.results.state import StateFootprint

#: ``kind`` of an engine result file; its ``schema_version`` is the run result format's.
ENGINE_KIND = "engine"


class EngineResult(msgspec.Struct, frozen=True):
    """One in-process engine run; ``engine --out DIR`` saves it as a result file of kind ``engine``.

    It carries the state each piece keeps per account (``state``), which the capacity plan reads
    (``cbdc-bench plan``), next to the ledger-time cost of each hook.
    """

    profile: str
    accounts: int
    batch: int
    seconds: float
    transfers: int
    transfers_per_s: float
    bytes_per_account: float
    ledger_bytes_per_account: float
    exact_path_share: float
    codes: dict[str, int]
    hooks: dict[str, float]
    hook_errors: dict[str, int]
    audit_ok: bool
    seed: int
    environment: Any = None
    #: Each hook's own figures (vetoes, rows logged, store bytes...), from ``Hook.stats()``.
    hook_stats: dict[str, Any] = {}
    #: Bytes per account of the ledger's columns and of each hook's state (``loadgen.results.state``).
    state: StateFootprint | None = None
    schema_version: int = SCHEMA_VERSION
    kind: str = ENGINE_KIND
    created_utc: str = ""
    #: Seconds to build the population, the ledger and the hooks' state (chunked, 2 threads).
    build_seconds: float | None = None
    #: Peak RSS of this process (VmHWM) right after the build, and at the end of the run.
    build_peak_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    #: The rule that built the starting state (``engine.population.POPULATION_VERSION``).
    population_version: int | None = None


def run_engine(
    *,
    accounts: int = 1_000_000,
    profile: str = "baseline",
    batch: int = 8192,
    seconds: float = 5.0,
    warmup: float = 1.0,
    seed: int = DEFAULT_SEED,
    pool: int = 32,
    scenario: str | None = None,
) -> EngineResult:
    """Build a ledger for ``profile``, drive it with a seeded workload, and measure it."""
    if batch < 1 or seconds <= 0:
        raise ValueError("batch must be >= 1 and seconds > 0")
    check_accounts_fit(accounts, profile, scenario)
    workload = Workload(scenario_workload(load_scenario(scenario), accounts=accounts, seed=seed))
    started = time.perf_counter()
    progress = TtyProgress.if_tty(f"building {accounts:,} accounts")
    balance, account_bits = workload.population.build_state(progress=progress)
    # The sequencer's clock runs on the workload's model of a day, as the server's does.
    clock = SequencerClock.for_accounts(accounts, workload.config.payments_per_account_per_day)
    hooks = build_hooks(profile, scenario)
    ledger = Ledger(accounts, balance_fen=balance, account_bits=account_bits, hooks=hooks, clock=clock)
    build_seconds = time.perf_counter() - started
    build_peak = peak_rss_bytes()
    stream = BatchPool(workload, pool, batch)
    return measure_engine(
        ledger,
        stream,
        profile=profile,
        batch=batch,
        seconds=seconds,
        warmup=warmup,
        seed=seed,
        build_seconds=build_seconds,
        build_peak_rss_bytes=build_peak,
    )


def measure_engine(
    ledger: Ledger,
    stream: BatchPool,
    *,
    profile: str,
    batch: int,
    seconds: float,
    warmup: float,
    seed: int,
    build_seconds: float | None = None,
    build_peak_rss_bytes: int | None = None,
) -> EngineResult:
    """Drive a built ``ledger`` with ``stream`` for ``warmup`` (discarded) then ``seconds``; closes its hooks."""
    accounts = ledger.accounts

    def run_for(duration: float) -> tuple[int, int]:
        spent_ns = 0
        done = 0
        while spent_ns < duration * 1e9:
            b = stream.next()
            t0 = time.perf_counter_ns()
            ledger.apply(b)
            ledger.run_deferred()
            spent_ns += time.perf_counter_ns() - t0
            done += len(b)
        return spent_ns, done

    run_for(warmup)
    # Work the warm-up handed to hooks' own threads or processes (the trove's child) is done
    # before the window opens, so none of it is charged to the measured transfers.
    for h in ledger.hooks:
        h.drain_background()
    before_transfers = ledger.stats.transfers
    before_exact = ledger.stats.exact_path_transfers
    before_codes = ledger.stats.codes.copy()
    before_hooks = _hook_ns(ledger)
    spent_ns, done = run_for(seconds)
    ledger_bytes = ledger.ledger_state_bytes()
    measured = ledger.stats.transfers - before_transfers
    audit = ledger.audit()
    pieces = {"ledger": ledger_bytes / accounts} | {h.name: h.state_bytes() / accounts for h in ledger.hooks}
    for h in ledger.hooks:
        h.close()
    hooks_ns = _hook_ns(ledger)  # after close: the background work done while closing is in it
    return EngineResult(
        profile=profile,
        accounts=accounts,
        batch=batch,
        seconds=spent_ns / 1e9,
        transfers=done,
        transfers_per_s=done / (spent_ns / 1e9),
        bytes_per_account=ledger.bytes_per_account(),
        ledger_bytes_per_account=ledger.ledger_state_bytes() / accounts,
        exact_path_share=(ledger.stats.exact_path_transfers - before_exact) / max(measured, 1),
        codes=name_counts(ledger.stats.codes - before_codes),
        hooks={n: (ns - before_hooks[n]) / max(measured, 1) for n, ns in hooks_ns.items()},
        hook_errors={n: t.errors for n, t in ledger.hook_timing.items() if t.errors},
        hook_stats={h.name: h.stats() for h in ledger.hooks},
        audit_ok=audit.ok,
        seed=seed,
        environment=collect(),
        state=StateFootprint(bytes_per_account=pieces),
        created_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        build_seconds=build_seconds,
        build_peak_rss_bytes=build_peak_rss_bytes,
        peak_rss_bytes=peak_rss_bytes(),
        population_version=POPULATION_VERSION,
    )


def _hook_ns(ledger: Ledger) -> dict[str, int]:
    """Each hook's time so far: its phases on the sequencer plus ``background_ns()`` read now.

    ``HookTiming.background_ns`` is as of the hook's last observe, so work still queued then (the
    trove's backlog, written at close) would be missing from it; read after ``close()``, the
    hook's own figure is final.
    """
    return {
        h.name: ledger.hook_timing[h.name].total_ns - ledger.hook_timing[h.name].background_ns + h.background_ns()
        for h in ledger.hooks
    }


def save_engine_result(result: EngineResult, directory: str | os.PathLike[str]) -> Path:
    """Write ``result`` as a new file ``<stamp>-engine-<profile>-<N>acct.json`` in ``directory``; its path."""
    data = msgspec.json.format(msgspec.json.encode(result), indent=1)
    return write_new(directory, f"engine-{result.profile}-{result.accounts}acct", result.created_utc, data)
