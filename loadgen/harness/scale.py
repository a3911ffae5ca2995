"""The scale benchmark: how engine throughput and end-to-end capacity change with the accounts.

For each size (10^4 ... 1.4x10^9 accounts) it measures, per profile:

* **engine**: ``Ledger.apply`` in process (as ``cbdc-bench engine``), ``trials`` times. The
  population (uint32 balances and the class/flags byte, 5 bytes per account) is built once per
  size; every trial builds a fresh ledger around those arrays with fresh hooks (their state is
  allocated again, which costs seconds at 1.4e9, outside the timed region), and afterwards the
  accounts the trial's batches touched are put back to their starting state
  (``Population.reset_accounts``: an account's starting state is a function of its id). So no
  trial sees another trial's balances, and 1.4e9 accounts are not rebuilt per trial.
* **end to end** (sizes in ``e2e_sizes``): a server process per (size, profile) and the maximum
  sustainable rate search of ``compare`` (``loadgen.harness.compare.Session``), whose result
  files are kept under ``OUT/runs``. Each search's phases run against the same server: its
  state carries over between phases, as in ``compare``.

Where memory is short the engine part of a size is freed before its end-to-end part starts. The
result is ``scale.json`` (``ScaleResult``) and ``scale.png`` (throughput against accounts, log x).
"""

from __future__ import annotations

import datetime as dt
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.chunks import TtyProgress
from engine.clock import SequencerClock
from engine.ledger import Ledger
from engine.memory import check_accounts_fit, peak_rss_bytes
from engine.population import POPULATION_VERSION
from engine.profiles import CompareSettings, build_hooks, trove_needed
from loadgen.generator.workload import DEFAULT_SEED, BatchPool, Workload, WorkloadConfig
from loadgen.harness.compare import Session
from loadgen.harness.engine_run import measure_engine
from loadgen.harness.server import running_server, server_arguments
from loadgen.results.compare import Plan
from loadgen.results.environment import Environment, collect

#: Format of ``scale.json``. History: 1 (issue 14): first version.
SCALE_FORMAT_VERSION = 1
DEFAULT_SIZES = (10_000, 1_000_000, 100_000_000, 1_400_000_000)


class ScaleSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the scale benchmark measures and for how long."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    profiles: tuple[str, ...] = ("baseline", "full")
    trials: int = 3
    seconds: float = 3.0
    warmup: float = 1.0
    batch: int = 8192
    pool: int = 32
    seed: int = DEFAULT_SEED
    #: Sizes that also get the end-to-end search (a server process each; 1.4e9 takes minutes to build).
    e2e_sizes: tuple[int, ...] = ()
    e2e_seconds: float = 2.0
    #: The search's ceiling (it brackets upwards from 300,000/s, or from this if lower).
    e2e_max_tps: float = CompareSettings().max_tps
    #: numpy's ``madvise(MADV_HUGEPAGE)`` on large arrays (its default on Linux); off to compare.
    hugepages: bool = True

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 2 or self.trials < 1 or self.seconds <= 0 or self.warmup < 0:
            raise ValueError("need sizes >= 2, trials >= 1, seconds > 0 and warmup >= 0")
        if not set(self.e2e_sizes) <= set(self.sizes):
            raise ValueError(f"e2e sizes {self.e2e_sizes} must be among the sizes {self.sizes}")


class EngineTrial(msgspec.Struct, frozen=True):
    accounts: int
    profile: str
    trial: int
    transfers_per_s: float
    bytes_per_account: float
    exact_path_share: float
    audit_ok: bool
    #: Seconds to allocate and fill the trial's hooks' state and wrap the ledger (not timed).
    hooks_build_seconds: float
    #: wallet_limits' longest wait in one batch (the day-stamp scrub), if the profile has it.
    rollover_stall_max_ns: int | None = None
    #: Each hook's time per measured transfer (ns), as ``engine --json`` reports it.
    hooks_ns_per_transfer: dict[str, float] = {}


class SizeBuild(msgspec.Struct, frozen=True):
    accounts: int
    population_build_seconds: float
    #: Peak RSS of the benchmark process after the population build (earlier sizes included).
    peak_rss_bytes: int | None


class EndToEnd(msgspec.Struct, frozen=True):
    accounts: int
    profile: str
    max_sustainable_tps: float
    note: str
    trials: int


class ScaleResult(msgspec.Struct, frozen=True):
    format_version: int
    kind: str
    created_utc: str
    settings: ScaleSettings
    population_version: int
    environment: Environment
    builds: list[SizeBuild]
    engine: list[EngineTrial]
    e2e: list[EndToEnd]
    note: str = (
        "population built once per size; each engine trial wraps it in a fresh ledger and hooks, "
        "and the accounts a trial touched are reset to their starting state afterwards"
    )


def _set_hugepages(enabled: bool) -> None:
    """numpy's madvise(MADV_HUGEPAGE) for new large arrays (a private switch of numpy >= 1.20)."""
    from numpy._core.multiarray import _set_madvise_hugepage  # type: ignore[attr-defined]

    _set_madvise_hugepage(enabled)


def run_scale(
    settings: ScaleSettings, out: Path, *, log: Callable[[str], None] = print, append: bool = False
) -> ScaleResult:
    """Measure every size and profile of ``settings``; write ``scale.json`` and ``scale.png`` to ``out``.

    ``append`` adds to the figures of an existing ``out/scale.json`` (e.g. 1.4e9 accounts measured
    in a second invocation with fewer trials); its settings then list every size measured.
    """
    out.mkdir(parents=True, exist_ok=True)
    _set_hugepages(settings.hugepages)
    before = load_scale(out / "scale.json") if append and (out / "scale.json").exists() else None
    builds: list[SizeBuild] = [] if before is None else list(before.builds)
    engine: list[EngineTrial] = [] if before is None else list(before.engine)
    e2e: list[EndToEnd] = [] if before is None else list(before.e2e)
    if before is not None:
        sizes = tuple(sorted({*before.settings.sizes, *settings.sizes}))
        settings_all = msgspec.structs.replace(
            settings, sizes=sizes, e2e_sizes=(*before.settings.e2e_sizes, *settings.e2e_sizes)
        )
    else:
        settings_all = settings
    for accounts in settings.sizes:
        for profile in settings.profiles:
            check_accounts_fit(accounts, profile)
        build, trials = _engine_size(settings, accounts, log)
        builds.append(build)
        engine += trials
        gc.collect()
        if accounts in settings.e2e_sizes:
            e2e += [_end_to_end(settings, accounts, profile, out, log) for profile in settings.profiles]
    result = ScaleResult(
        format_version=SCALE_FORMAT_VERSION,
        kind="scale",
        created_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        settings=settings_all,
        population_version=POPULATION_VERSION,
        environment=collect(),
        builds=builds,
        engine=engine,
        e2e=e2e,
    )
    (out / "scale.json").write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    plot_scale(result, out / "scale.png")
    return result


def load_scale(path: Path) -> ScaleResult:
    """A ``scale.json``, checked for its format version."""
    raw = path.read_bytes()
    version = msgspec.json.decode(raw, type=dict[str, Any]).get("format_version")
    if version != SCALE_FORMAT_VERSION:
        raise ValueError(f"{path}: scale format {version}, this version reads {SCALE_FORMAT_VERSION}")
    return msgspec.json.decode(raw, type=ScaleResult)


def _engine_size(
    settings: ScaleSettings, accounts: int, log: Callable[[str], None]
) -> tuple[SizeBuild, list[EngineTrial]]:
    workload = Workload(WorkloadConfig(accounts=accounts, seed=settings.seed))
    started = time.perf_counter()
    balance, bits = workload.population.build_state(progress=TtyProgress.if_tty(f"building {accounts:,} accounts"))
    build = SizeBuild(accounts, time.perf_counter() - started, peak_rss_bytes())
    log(f"{accounts:,} accounts: population built in {build.population_build_seconds:.1f} s")
    stream = BatchPool(workload, settings.pool, settings.batch)
    trials = []
    for profile in settings.profiles:
        for trial in range(1, settings.trials + 1):
            t0 = time.perf_counter()
            clock = SequencerClock.for_accounts(accounts, workload.config.payments_per_account_per_day)
            ledger = Ledger(accounts, balance_fen=balance, account_bits=bits, hooks=build_hooks(profile), clock=clock)
            hooks_s = time.perf_counter() - t0
            r = measure_engine(
                ledger,
                stream,
                profile=profile,
                batch=settings.batch,
                seconds=settings.seconds,
                warmup=settings.warmup,
                seed=settings.seed,
            )
            stall = r.hook_stats.get("wallet_limits", {}).get("scrub_max_ns")
            trials.append(
                EngineTrial(
                    accounts=accounts,
                    profile=profile,
                    trial=trial,
                    transfers_per_s=r.transfers_per_s,
                    bytes_per_account=r.bytes_per_account,
                    exact_path_share=r.exact_path_share,
                    audit_ok=r.audit_ok,
                    hooks_build_seconds=hooks_s,
                    rollover_stall_max_ns=stall,
                    hooks_ns_per_transfer=r.hooks,
                )
            )
            log(f"  engine {profile} trial {trial}: {r.transfers_per_s:,.0f}/s (hooks built in {hooks_s:.1f} s)")
            del ledger
            # Every account the stream named so far (each pass plants behaviours by other people).
            touched = stream.touched_accounts()
            workload.population.reset_accounts(balance, bits, touched[touched < accounts])
    return build, trials


def _end_to_end(
    settings: ScaleSettings, accounts: int, profile: str, out: Path, log: Callable[[str], None]
) -> EndToEnd:
    plan = Plan(
        mode="scale",
        accounts=accounts,
        repeats=1,
        precision=0.1,
        confirm_repeats=0,
        search_warmup_s=1.0,
        search_seconds=settings.e2e_seconds,
        equal_warmup_s=1.0,
        equal_seconds=settings.e2e_seconds,
        drain_s=3.0,
    )
    top = settings.e2e_max_tps
    compare = CompareSettings(start_tps=min(300_000.0, top), min_tps=min(10_000.0, top), max_tps=top)
    runs = out / "runs" / f"{accounts}-{profile}"
    extra = ("--trove", str(out / "trove" / f"{accounts}-{profile}")) if trove_needed(profile) else ()
    args = server_arguments(
        profile=profile, accounts=accounts, seed=settings.seed, operators=plan.operators, extra=extra
    )
    with running_server(args, accounts=accounts) as server:
        session = Session(
            server,
            profile=profile,
            repeat=1,
            plan=plan,
            settings=compare,
            seed=settings.seed,
            scenario=None,
            runs_dir=runs,
            echo=False,
            on_phase=lambda ref, _result: log(
                f"  e2e {profile} {ref.phase} {ref.offered_tps:,.0f}/s: p99 {ref.p99_ms:.1f} ms, "
                + ("sustained" if ref.sustained else "not sustained")
            ),
        )
        search = session.search(compare.start_tps, growth=2.0)
    r = search.result
    return EndToEnd(accounts, profile, r.max_sustainable_tps, r.note, len(r.trials))


def plot_scale(result: ScaleResult, path: Path) -> None:
    """``scale.png``: engine throughput (median and range over trials) and end-to-end maxima against accounts."""
    fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, profile in enumerate(result.settings.profiles):
        color = f"C{i}"
        sizes = sorted({t.accounts for t in result.engine if t.profile == profile})
        runs = [[t.transfers_per_s for t in result.engine if t.profile == profile and t.accounts == n] for n in sizes]
        if sizes:
            med = [float(np.median(r)) for r in runs]
            ax.plot(sizes, med, "o-", color=color, label=f"{profile}: engine (median of trials)")
            ax.vlines(sizes, [min(r) for r in runs], [max(r) for r in runs], color=color, alpha=0.5)
        points = [(p.accounts, p.max_sustainable_tps) for p in result.e2e if p.profile == profile]
        if points:
            x, y = zip(*sorted(points), strict=True)
            ax.plot(x, y, "s--", color=color, label=f"{profile}: end to end, max sustainable")
    ax.axhline(300_000, color="0.5", lw=0.8, ls=":", label="300,000/s")
    ax.set_xscale("log")
    ax.set_xlabel("accounts")
    ax.set_ylabel("transfers/s")
    ax.set_title(f"Throughput against accounts (population v{result.population_version})")
    ax.legend(fontsize=8)
    fig.savefig(path)
