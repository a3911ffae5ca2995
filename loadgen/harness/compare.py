"""The compare session: searches and equal-load runs over fresh server processes, one summary.

``run_compare`` plans the phases (``QUICK``/``FULL``), starts one ``serve`` process per profile and
repeat, runs a ``Session`` of load phases against it (each phase a measured run, saved and checked
before the next), shuffles the profile order per repeat from the seed, writes ``compare.json`` and
builds the report. ``cbdc-bench compare --help`` states the method the user sees: the SLO, the
confirmation runs, why servers are reused within a session and fresh across repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.profiles import CompareSettings, load_scenario, trove_needed
from engine.server.config import SIGNED_PROFILES
from loadgen.generator.gateway import GatewayError, LoadConfig, new_event_loop
from loadgen.generator.workload import DEFAULT_SEED, ScenarioWorkload
from loadgen.harness.admin import AdminClient
from loadgen.harness.calibration import cpu_calibration
from loadgen.harness.measured import remove_journal, run_measure
from loadgen.harness.resume import ComparePlan, PhaseKey, PhaseLog, save_plan
from loadgen.harness.search import RunOutcome, Trial, find_max_sustainable
from loadgen.harness.server import ServerProcess, running_server, server_arguments
from loadgen.model.train import ensure_profile_model
from loadgen.report.writer import write_report
from loadgen.results.compare import (
    CompareSummary,
    Plan,
    ProfileSearch,
    RunRef,
    now_utc,
    outcome_of,
    save_summary,
)
from loadgen.results.environment import Calibration, collect
from loadgen.results.run import RunResult, save, verdict_of
from loadgen.results.steal import least_stolen, result_steal
from loadgen.results.verdict import Kind

#: ``--quick``: the default profile set in about 10 minutes on a 2-core machine. Shorter phases
#: (1 s warm-up + 2 s measured per search trial and per equal-load run: ~400k-2M latencies per
#: trial, enough for a p99, thin for a p99.99), 2 repeats, 10% bisection.
QUICK = Plan(
    mode="quick",
    accounts=1_000_000,
    repeats=2,
    precision=0.10,
    confirm_repeats=1,
    search_warmup_s=1.0,
    search_seconds=2.0,
    equal_warmup_s=1.0,
    equal_seconds=2.0,
    drain_s=2.0,
)
#: The default: longer phases and 3 repeats; precision comes from the scenario.
FULL = Plan(
    mode="full",
    accounts=1_000_000,
    repeats=3,
    precision=0.05,
    confirm_repeats=1,
    search_warmup_s=3.0,
    search_seconds=10.0,
    equal_warmup_s=5.0,
    equal_seconds=20.0,
    drain_s=5.0,
)
#: Seconds a phase costs beyond its schedule: pool generation, connections, audit, idle wait.
PHASE_OVERHEAD_S = 0.5
#: Equal-load rates are rounded down to this step (the lowest maximum found is noisy anyway).
RATE_STEP_TPS = 10_000.0
ECHO = "echo"


class CompareError(RuntimeError):
    """A phase failed in a way that makes the comparison untrustworthy (audit, protocol, lost link).

    ``exit_status`` is what ``compare`` exits with: 5 (the ``incomplete`` verdict's status) when a
    phase could not be judged, 1 for every other failure.
    """

    def __init__(self, message: str, *, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


# ---- planning --------------------------------------------------------------------------------


def estimated_trials(settings: CompareSettings, plan: Plan, *, first: bool) -> int:
    """Typical trials of one search: bracket + bisect + confirm (seeded repeats need fewer)."""
    confirm = 2 * plan.confirm_repeats
    if first:
        # Doubling from the start rate to a ceiling ~2-4x above it, then bisecting a factor of 2.
        return 3 + math.ceil(math.log2(1 / plan.precision)) + confirm
    return 3 + confirm


def estimate_seconds(settings: CompareSettings, plan: Plan, profiles: int) -> float:
    search_phase = plan.search_warmup_s + plan.search_seconds + PHASE_OVERHEAD_S + plan.drain_s / 4
    equal_phase = plan.equal_warmup_s + plan.equal_seconds + PHASE_OVERHEAD_S
    trials = estimated_trials(settings, plan, first=True) + (plan.repeats - 1) * estimated_trials(
        settings, plan, first=False
    )
    rates = len(set(settings.common_rates_tps)) + 1
    return profiles * (trials * search_phase + plan.repeats * rates * equal_phase)


def common_rates(settings: CompareSettings, searches: list[ProfileSearch]) -> list[float]:
    """The scenario's common rates plus the lowest maximum sustained (median over repeats)."""
    rates = set(settings.common_rates_tps)
    by_profile: dict[str, list[float]] = {}
    for s in searches:
        if s.profile != ECHO:
            by_profile.setdefault(s.profile, []).append(s.result.max_sustainable_tps)
    medians = [sorted(v)[len(v) // 2] for v in by_profile.values()]
    lowest = min((m for m in medians if m > 0), default=0.0)
    if lowest >= RATE_STEP_TPS:
        rates.add(math.floor(lowest / RATE_STEP_TPS) * RATE_STEP_TPS)
    return sorted(rates)


def search_start(
    settings: CompareSettings, plan: Plan, searches: list[ProfileSearch], profile: str
) -> tuple[float, float]:
    """Start rate and bracketing factor of the next search of ``profile``.

    A repeat starts at the median of the profile's earlier answers and brackets in steps of
    twice the precision; a first search starts at the median answer of the profiles searched
    so far (the scenario's ``start_tps`` for the very first) and doubles or halves. A better
    start only saves trials: the boundary is still bracketed, bisected and confirmed.
    """

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    own = [s.result.max_sustainable_tps for s in searches if s.profile == profile and s.result.max_sustainable_tps > 0]
    if own:
        return median(own), 1 + 2 * plan.precision
    others = [s.result.max_sustainable_tps for s in searches if s.profile != ECHO and s.result.max_sustainable_tps > 0]
    if others:
        return median(others), 2.0
    return settings.start_tps, 2.0


def profile_orders(profiles: list[str], *, repeats: int, rng: random.Random) -> list[list[str]]:
    """A fresh random order of ``profiles`` for each repeat (drift then favours none of them)."""
    return [rng.sample(profiles, len(profiles)) for _ in range(repeats)]


# ---- one server session ----------------------------------------------------------------------


async def _wait_idle(host: str, port: int, timeout_s: float = 60.0) -> None:
    """Until the server has no queued transfers (a saturated phase leaves a backlog)."""
    admin = AdminClient(host, port)
    await admin.connect()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = await admin.stats()
            if not stats.get("queue_transfers") and not stats.get("queue_submits"):
                return
            if time.monotonic() > deadline:
                raise CompareError(
                    f"server still has {stats.get('queue_transfers')} queued transfers after {timeout_s} s"
                )
            await asyncio.sleep(0.05)
    finally:
        admin.close()


def wait_idle(server: ServerProcess) -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_wait_idle(server.host, server.port))


class Session:
    """Load phases against one server process; every result is saved and checked."""

    def __init__(
        self,
        server: ServerProcess | Callable[[], ServerProcess],
        *,
        profile: str,
        repeat: int,
        plan: Plan,
        settings: CompareSettings,
        seed: int,
        scenario: str | None,
        runs_dir: Path,
        echo: bool,
        on_phase: Callable[[RunRef, RunResult], None],
        log: PhaseLog | None = None,
        external: bool = False,
        calibration: Calibration | None = None,
    ) -> None:
        # A server, or how to start one when a phase first needs it (a resumed session may need none).
        self._server = server if isinstance(server, ServerProcess) else None
        self._start_server = None if isinstance(server, ServerProcess) else server
        self.log = log
        self.external = external
        self.profile = profile
        self.repeat = repeat
        self.plan = plan
        self.settings = settings
        self.seed = seed
        self.scenario = scenario
        self.runs_dir = runs_dir
        self.echo = echo
        self.on_phase = on_phase
        self.calibration = calibration  # taken once per comparison, recorded in every phase's file
        self.refs: list[RunRef] = []
        self._last: RunResult | None = None

    @property
    def server(self) -> ServerProcess:
        """The session's server, started on first use (a resumed session may need none)."""
        if self._server is None:
            assert self._start_server is not None
            self._server = self._start_server()
        return self._server

    def phase(self, rate_tps: float, *, stage: str, phase: str = "") -> RunOutcome:
        """Run, save and check one phase; reported to ``on_phase`` once its ``phase`` label is known.

        A phase the log says completed before (``compare --resume``) is read from its result file.
        """
        key = PhaseKey(self.repeat, self.profile, stage, len(self.refs), rate_tps)
        result = None if self.log is None else self.log.saved(key)
        measured = result is None
        spoiled = 0
        if result is None:
            result, spoiled = self._measure_unstolen(rate_tps, search=stage == "search")
            path = save(result, self.runs_dir)
        else:
            assert self.log is not None
            path = self.runs_dir.parent / self.log.done[key]
        problems = list(result.failures)
        if result.summary.audit_ok is False:
            problems.append("conservation audit failed")
        if result.counts.protocol_errors:
            problems.append(f"{result.counts.protocol_errors} protocol errors")
        if result.codes.get("stale_id") or result.codes.get("invalid_id"):
            problems.append("transfer ids refused (stale_id/invalid_id): the phases' ids collided")
        if problems:
            raise CompareError(f"{self.profile} at {rate_tps:,.0f}/s ({path}): " + "; ".join(problems))
        if measured:
            try:
                wait_idle(self.server)
            except (GatewayError, TimeoutError) as exc:
                raise CompareError(f"{self.profile}: server unreachable after a phase: {exc}") from exc
        verdict = verdict_of(result, self.settings)
        if verdict.kind is Kind.INCOMPLETE:
            raise CompareError(
                f"{self.profile} at {rate_tps:,.0f}/s ({path}) could not be judged: {verdict.line}",
                exit_status=verdict.exit_status,
            )
        outcome = outcome_of(result, self.settings)
        ok = verdict.sustained
        ref = RunRef(
            file=str(path.relative_to(self.runs_dir.parent)),
            profile=self.profile,
            repeat=self.repeat,
            stage=stage,
            phase=phase,
            offered_tps=rate_tps,
            settled_tps=outcome.achieved_tps,
            p99_ms=outcome.p99_ms,
            sustained=ok,
            generator_kept_schedule=outcome.generator_kept_schedule,
            stolen_cores=None if result.machine_cpu is None else result.machine_cpu.stolen_cores,
            spoiled_attempts=spoiled,
        )
        self.refs.append(ref)
        if self.log is not None:
            self.log.record(key, ref.file)
        self._last = result
        if phase:
            self.on_phase(ref, result)
        return outcome

    def _measure_unstolen(self, rate_tps: float, *, search: bool) -> tuple[RunResult, int]:
        """A phase measured again, up to ``plan.steal_retries`` times, while the host's steal spoiled its
        window (``steal_spoiled``); the least-stolen attempt and how many were set aside.

        Why: a burst of steal (0.1-0.57 of 2 cores on the shared host, issue 21) fails a trial the
        server would pass and sends a search down; the verdict only notes it. The attempts set aside
        are saved under ``OUT/spoiled`` (outside ``runs``), so nothing measured is lost.
        """
        kept, spoiled = least_stolen(
            lambda: self._measure(rate_tps, search=search),
            result_steal,
            self.plan.steal_retries,
            before_retry=lambda: wait_idle(self.server),
        )
        for result in spoiled:
            save(result, self.runs_dir.parent / "spoiled")
        return kept, len(spoiled)

    def _measure(self, rate_tps: float, *, search: bool) -> RunResult:
        p = self.plan
        server = self.server
        config = LoadConfig(
            host=server.host,
            port=server.port,
            rate_tps=rate_tps,
            warmup=p.search_warmup_s if search else p.equal_warmup_s,
            seconds=p.search_seconds if search else p.equal_seconds,
            operators=p.operators,
            processes=p.processes,
            drain=p.drain_s,
            seed=self.seed,
            workload=ScenarioWorkload.of(load_scenario(self.scenario)),
        )
        return run_measure(
            config,
            kind="compare",
            server_pid=server.pid,
            audit=True,
            scenario=self.scenario,
            echo=self.echo,
            targets=self.settings,
            external=self.external,
            calibration=self.calibration,
            server_args=() if self.external else tuple(server.args),  # the serve arguments, as ``run`` records
        )

    def search(self, start_tps: float, growth: float) -> ProfileSearch:
        s = self.settings

        def label(trial: Trial) -> None:
            # The search names a trial's phase after measuring it: label the ref, then report it.
            self.refs[-1] = ref = msgspec.structs.replace(self.refs[-1], phase=trial.phase)
            assert self._last is not None
            self.on_phase(ref, self._last)

        result = find_max_sustainable(
            lambda rate: self.phase(rate, stage="search"),
            slo_p99_ms=s.slo_p99_ms,
            start_tps=min(max(start_tps, s.min_tps), s.max_tps),
            max_tps=s.max_tps,
            min_tps=s.min_tps,
            precision=self.plan.precision,
            confirm_repeats=self.plan.confirm_repeats,
            min_achieved_ratio=s.min_achieved_ratio,
            growth=growth,
            progress=label,
        )
        low, high = result.interval()
        return ProfileSearch(
            profile=self.profile,
            repeat=self.repeat,
            start_tps=start_tps,
            result=result,
            interval_low_tps=low,
            interval_high_tps=high,
            generator_limited=result.generator_limited,
        )


# ---- the whole comparison --------------------------------------------------------------------


def run_compare(
    scenario: str | None,
    *,
    profiles: list[str] | None = None,
    plan: Plan = QUICK,
    seed: int = DEFAULT_SEED,
    out: str | Path | None = None,
    calibrate: bool = False,
    command: str = "cbdc-bench compare",
    console: Console | None = None,
    make_report: bool = True,
    trove: str | Path | None = None,
    keep_trove: bool = False,
    server_args: tuple[str, ...] = (),
    journal: str | Path | None = None,
    fsync: str = "batch",
    keep_journal: bool = False,
    resume: bool = False,
    target: tuple[str, int] | None = None,
) -> tuple[CompareSummary, Path]:
    """Run the comparison; the summary and its path (``OUT/compare.json``).

    Each server of a profile that keeps a trove gets its own, ``PROFILE-rREPEAT`` under ``trove``
    (default ``OUT/troves``), deleted when that server stops unless ``keep_trove``. With
    ``journal`` each server journals (``fsync`` policy) to a fresh file there,
    ``PROFILE-rREPEAT-N.cbj`` (N counts the comparison's servers), deleted with its segments,
    snapshots and lock file when the session ends unless
    ``keep_journal``: the searches then measure the system ``run --journal`` measures (the capacity
    plan fits journalled runs, issue 21). ``resume``:
    ``out`` holds an interrupted comparison of the same arguments; its completed phases are read
    back instead of measured (``loadgen.harness.resume``). ``target``: every session loads that
    running server instead of a fresh one (``--reuse-server``): only its profile is searched, and
    the summary's notes say the trials were not independent.
    """
    console = console or Console(soft_wrap=True)
    scen = load_scenario(scenario)
    settings = scen.compare
    # Signed profiles only when named: their gateways sign every payment of the run ahead of it.
    names = list(profiles) if profiles else [p for p in scen.profiles if p not in SIGNED_PROFILES]
    unknown = [p for p in names if p not in scen.profiles]
    if unknown:
        raise ValueError(f"unknown profile(s) {', '.join(unknown)}; choose from: {', '.join(scen.profiles)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a profile is listed twice: {names}")
    external_note = ""
    if target is not None:
        names, plan, external_note = _reused_server(target, names if profiles else None, plan, calibrate)
    searched = [*names, ECHO] if calibrate else names
    for profile in names:  # a profile with the risk model needs it trained before its server starts
        ensure_profile_model(profile, scenario)
    created = now_utc()
    out_dir = Path(out) if out is not None else Path("results") / f"compare-{created.replace(':', '')}-{plan.mode}"
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_plan(out_dir, ComparePlan(scenario, profiles, plan, seed, calibrate))
    log = PhaseLog(out_dir, resume=resume)
    if resume:
        console.print(
            f"resuming {out_dir}: {len(log.done)} completed phases are read back, not measured; a session "
            "interrupted half-way goes on against a fresh server"
        )
    rng = random.Random(seed)
    started = time.monotonic()
    calibration = cpu_calibration()

    estimate = estimate_seconds(settings, plan, len(searched))
    notes = [
        f"{plan.mode} mode: {plan.repeats} repeat(s), {plan.accounts:,} accounts, search trials "
        f"{plan.search_warmup_s:g} s warm-up + {plan.search_seconds:g} s measured, equal-load runs "
        f"{plan.equal_warmup_s:g} s + {plan.equal_seconds:g} s, bisection to {plan.precision:.0%}",
        f"sustained = settled >= {settings.min_achieved_ratio:.0%} of offered and p99 <= {settings.slo_p99_ms:g} ms",
    ]
    if external_note:
        notes.append(external_note)
    if plan.mode == "quick":
        notes.append(
            "quick mode: shorter phases and fewer repeats than the default; tails beyond p99.9 rest on few samples"
        )
    for n in notes:
        console.print(n)
    console.print(
        f"profiles {', '.join(searched)}; estimated duration {estimate / 60:.0f} min "
        f"(searches vary with where each profile's limit is); results in {out_dir}"
    )

    searches: list[ProfileSearch] = []
    refs: list[RunRef] = []

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("phases"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
        console=console,
        transient=False,
    ) as progress:
        total = sum(estimated_trials(settings, plan, first=r == 1) for r in range(1, plan.repeats + 1)) * len(searched)
        total += plan.repeats * len(names) * (len(set(settings.common_rates_tps)) + 1)
        overall = progress.add_task("compare", total=total, eta="")
        done = 0

        def on_phase(ref: RunRef, result: RunResult) -> None:
            nonlocal done
            done += 1
            elapsed = time.monotonic() - started
            verdict = "sustained" if ref.sustained else "NOT sustained"
            lag = "" if ref.generator_kept_schedule else " (generator behind schedule)"
            left = max(progress.tasks[overall].total or 0, done) - done
            console.print(
                f"  trial {done}/~{done + left} r{ref.repeat} {ref.profile:<12} {ref.stage:<10} {ref.phase:<12} "
                f"{ref.offered_tps:>11,.0f}/s: "
                f"settled {ref.settled_tps / ref.offered_tps:6.1%}, p99 {ref.p99_ms:8.2f} ms -> {verdict}{lag}"
                + (f", steal {ref.stolen_cores:.2f} cores" if ref.stolen_cores is not None else "")
                + (f" (kept of {ref.spoiled_attempts + 1} attempts: steal)" if ref.spoiled_attempts else "")
            )
            rate = elapsed / done
            progress.update(overall, completed=done, eta=f"~{left * rate / 60:.1f} min left (estimate)")

        server_numbers = itertools.count(1)  # journal names: never one a session before used

        @contextlib.contextmanager
        def session(profile: str, repeat: int) -> Iterator[Session]:
            """A fresh server for one profile and repeat, and the session that loads it."""
            trial_trove = None
            if profile != ECHO and trove_needed(profile, scenario):
                trial_trove = (Path(trove) if trove is not None else out_dir / "troves") / f"{profile}-r{repeat}"

            journals: list[Path] = []

            def start() -> ServerProcess:
                if target is not None:  # a stand-in that was never started: no pid, nothing to stop
                    return ServerProcess([], 0.0, host=target[0], port=target[1])
                extra = server_args
                if journal is not None:  # a fresh file per server: a restarted one must not replay the last
                    Path(journal).mkdir(parents=True, exist_ok=True)
                    journals.append(Path(journal) / f"{profile}-r{repeat}-{next(server_numbers)}.cbj")
                    extra = (*extra, "--journal", str(journals[-1]), "--fsync", fsync)
                return servers.enter_context(_server(profile, plan, seed, scenario, trial_trove, extra))

            try:
                with contextlib.ExitStack() as servers:
                    yield Session(
                        start,
                        profile=profile,
                        repeat=repeat,
                        plan=plan,
                        settings=settings,
                        seed=seed,
                        scenario=scenario,
                        runs_dir=runs_dir,
                        echo=profile == ECHO,
                        on_phase=on_phase,
                        log=log,
                        external=target is not None,
                        calibration=calibration,
                    )
            finally:
                if trial_trove is not None and not keep_trove:
                    shutil.rmtree(trial_trove, ignore_errors=True)
                for file in journals:  # the servers have stopped: segments, snapshots and lock files go too
                    remove_journal(file, keep=keep_journal)

        order = profile_orders(searched, repeats=plan.repeats, rng=rng)
        for repeat, sequence in enumerate(order, start=1):
            for profile in sequence:
                start, growth = search_start(settings, plan, searches, profile)
                progress.update(overall, description=f"r{repeat}/{plan.repeats} search {profile}")
                with session(profile, repeat) as s:
                    found = s.search(start, growth)
                searches.append(found)
                refs += s.refs
                r = found.result
                console.print(
                    f"r{repeat} {profile}: max sustainable {r.max_sustainable_tps:,.0f}/s "
                    f"(capacity in [{found.interval_low_tps:,.0f}, {found.interval_high_tps:,.0f}]), {r.note}"
                    + ("; generator fell behind near the limit" if found.generator_limited else "")
                )
            # Re-estimate the remaining searches from what they actually took.
            per_search = sum(1 for x in refs if x.stage == "search") / len(searches)
            remaining = (
                (plan.repeats - repeat) * len(searched) * min(per_search, estimated_trials(settings, plan, first=False))
            )
            rates_n = len(set(settings.common_rates_tps)) + 1
            progress.update(overall, total=done + remaining + plan.repeats * len(names) * rates_n)

        rates = common_rates(settings, searches)
        progress.update(overall, total=done + plan.repeats * len(names) * len(rates))
        console.print("equal-load rates: " + ", ".join(f"{r:,.0f}/s" for r in rates))
        equal_order = profile_orders(names, repeats=plan.repeats, rng=rng)
        for repeat, sequence in enumerate(equal_order, start=1):
            for profile in sequence:
                progress.update(overall, description=f"r{repeat}/{plan.repeats} equal load {profile}")
                with session(profile, repeat) as s:
                    for rate in rng.sample(rates, len(rates)):
                        s.phase(rate, stage="equal-load", phase="equal")
                refs += s.refs

    summary = CompareSummary(
        created_utc=created,
        command=command,
        scenario=scenario,
        profiles=searched,
        seed=seed,
        plan=plan,
        settings=settings,
        order=order,
        equal_order=equal_order,
        common_rates_tps=rates,
        searches=searches,
        runs=refs,
        environment=msgspec.structs.replace(collect(), calibration=calibration),
        duration_s=time.monotonic() - started,
        notes=notes,
    )
    path = save_summary(summary, out_dir / "compare.json")
    console.print(
        f"comparison summary: {path} ({len(refs)} result files in {runs_dir}); took {summary.duration_s / 60:.1f} min"
    )
    if make_report:
        written = write_report([out_dir], out_dir)
        console.print("report: " + ", ".join(str(p) for p in written))
    return summary, path


def _reused_server(
    target: tuple[str, int], profiles: list[str] | None, plan: Plan, calibrate: bool
) -> tuple[list[str], Plan, str]:
    """The profile list, plan and note of a comparison against the running server at ``target``."""
    host, port = target

    async def welcome() -> Any:
        admin = AdminClient(host, port)
        try:
            return await admin.connect()
        finally:
            admin.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        w = runner.run(welcome())
    if calibrate or w.echo:
        raise ValueError("--calibrate needs echo servers that compare starts itself; leave it out with --target")
    if profiles is not None and profiles != [w.profile]:
        raise ValueError(f"the server at {host}:{port} runs profile {w.profile!r}; --profiles can only name that one")
    note = (
        f"--target {host}:{port} --reuse-server: every trial loaded one server started elsewhere (profile "
        f"{w.profile}, {w.accounts:,} accounts), so trials are not independent (its state carries over from one to "
        "the next) and its configuration, CPU and audit were not under compare's control"
    )
    return [w.profile], msgspec.structs.replace(plan, accounts=w.accounts), note


def _server(
    profile: str, plan: Plan, seed: int, scenario: str | None, trove: Path | None = None, extra: tuple[str, ...] = ()
) -> contextlib.AbstractContextManager[ServerProcess]:
    echo = profile == ECHO
    args = server_arguments(
        profile="baseline" if echo else profile,
        accounts=plan.accounts,
        seed=seed,
        operators=plan.operators,
        scenario=scenario,
        echo=echo,
        extra=(*extra, *(() if trove is None else ("--trove", str(trove)))),
    )
    return running_server(args, accounts=plan.accounts)
