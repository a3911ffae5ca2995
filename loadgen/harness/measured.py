"""The measured run: open-loop load against a server, its stats probed at the window's edges, audited.

``measure`` loads a running server (``cbdc-bench load``): it starts the gateways
(``loadgen.generator``), reads the server's cumulative stats and CPU at the start and end of the
measured window (so warm-up is excluded from hook costs and server CPU), audits conservation
after the drain, and builds the ``RunResult``. ``run_benchmark`` wraps it for ``cbdc-bench run``:
a fresh server process (``loadgen.harness.server``), optionally journalled, measured and stopped.
With ``echo`` the server acknowledges without a ledger (a calibration of the generator).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console

from engine.journal import segment_files
from engine.memory import check_accounts_fit
from engine.profiles import CompareSettings
from engine.server.config import SIGNED_PROFILES
from engine.validators import tier_mismatch
from loadgen.generator.gateway import GatewayError, LoadConfig, new_event_loop, run_load
from loadgen.generator.progress import LoadProgress
from loadgen.generator.progress_build import build_bar
from loadgen.harness.admin import AdminClient
from loadgen.harness.calibration import cpu_calibration, with_ed25519
from loadgen.harness.cpu_split import cpu_ns_per_payment
from loadgen.harness.server import running_server, server_arguments
from loadgen.results import machine_cpu
from loadgen.results.environment import Calibration, collect
from loadgen.results.run import AuditOutcome, RunResult, build_result

#: The defaults are the headline question itself: 1M accounts at 300,000 payments/s for 30 s
#: (about 40 s with start-up on a 2-core machine).
DEFAULT_RATE_TPS = 300_000
DEFAULT_SECONDS = 30.0
DEFAULT_WARMUP = 5.0
DEFAULT_ACCOUNTS = 1_000_000


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` from /proc (None where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hook_cost(stats_start: dict[str, Any], stats_end: dict[str, Any]) -> dict[str, Any]:
    """Per-hook cost over the measured window, from the server's cumulative stats at its edges.

    The server reports ``stats["hooks"] = {name: {"authorize_ns": ..., "observe_ns": ...,
    "begin_ns": ..., "errors": ..., ...}}`` since it started, and ``stats["ledger"]["transfers"]``.
    Each cumulative counter's increase over the window is kept, and ``ns_per_transfer`` is
    recomputed from the summed ``*_ns`` increases (the server's own ``ns_per_transfer`` is an
    average since start-up, warm-up included, so it is not differenced).
    """
    end_hooks = stats_end.get("hooks")
    if not isinstance(end_hooks, dict):
        return {}
    start_hooks = stats_start.get("hooks")
    start_hooks = start_hooks if isinstance(start_hooks, dict) else {}
    transfers = _ledger_transfers(stats_end) - _ledger_transfers(stats_start)
    out: dict[str, Any] = {}
    for name, end in end_hooks.items():
        if not isinstance(end, dict):
            continue
        start = start_hooks.get(name)
        start = start if isinstance(start, dict) else {}
        delta = {
            k: _num(v) - _num(start.get(k))
            for k, v in end.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "ns_per_transfer"
        }
        spent_ns = sum(v for k, v in delta.items() if k.endswith("_ns"))
        delta["ns_per_transfer"] = spent_ns / transfers if transfers > 0 else 0.0
        out[name] = delta
    return out


def _ledger_transfers(stats: dict[str, Any]) -> float:
    ledger = stats.get("ledger")
    if isinstance(ledger, dict) and "transfers" in ledger:
        return _num(ledger["transfers"])
    return _num(stats.get("transfers"))


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) else 0.0


async def measure(
    config: LoadConfig,
    *,
    kind: str = "load",
    server_pid: int | None = None,
    audit: bool = True,
    scenario: str | None = None,
    echo: bool = False,
    targets: CompareSettings | None = None,
    progress: Console | None = None,
    external: bool = False,
    calibration: Calibration | None = None,
    server_args: tuple[str, ...] = (),
    validators: str | None = None,
) -> RunResult:
    """Run the load, probing server stats and CPU at the measured window's edges; audit after.

    ``targets``: what the result's verdict judges against (the default targets if None).
    ``calibration``: the CPU calibration score to record (taken now, before the load, if None).
    ``server_args``: the ``serve`` arguments, when cbdc-bench started the server. A server
    running a signed profile (its Welcome says) gets signed Submits, and the calibration gains
    the Ed25519 rate. ``validators``: the tier (``--validators`` spec) the server must verify
    them with; another one is a ``GatewayError``.
    ``progress``: the terminal to draw the live progress line on (``progress_console``), or None.
    ``external``: the server was not started by this run (``load``, ``run --target``); its CPU
    is then read from its stats if ``server_pid`` is not given.
    """
    environment = msgspec.structs.replace(collect(), calibration=calibration or cpu_calibration())
    live = (
        None
        if progress is None
        else LoadProgress(progress, rate_tps=config.rate_tps, warmup_s=config.warmup, seconds=config.seconds)
    )
    admin = AdminClient(config.host, config.port, secrets=config.secrets)
    server_welcome = await admin.connect()
    echo = echo or server_welcome.echo
    if server_welcome.profile in SIGNED_PROFILES and not config.signed:
        config = msgspec.structs.replace(config, signed=True)
    if config.signed and environment.calibration is not None:
        environment = msgspec.structs.replace(environment, calibration=with_ed25519(environment.calibration))
    if validators is not None:
        why = tier_mismatch(validators, (await admin.stats()).get("validators"))
        if why is not None:
            admin.close()
            raise GatewayError(why)
    probes: dict[str, tuple[float | None, dict[str, Any]]] = {}
    machine: dict[str, machine_cpu.CpuSample] = {}  # the whole machine's CPU at the window's edges
    probe_failures: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def probe(name: str, at_ns: int) -> None:
        delay = (at_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        cpu = process_cpu_s(server_pid) if server_pid is not None else None
        machine[name] = await asyncio.to_thread(machine_cpu.sample)
        try:
            stats = await admin.stats()
        except (GatewayError, TimeoutError) as exc:
            probe_failures.append(f"server stats at {name}: {exc}")
            stats = {}
        probes[name] = (cpu, stats)

    def on_start(start_ns: int) -> None:
        if live is not None:
            live.started(start_ns)
        window_start = start_ns + int(config.warmup * 1e9)
        window_end = window_start + int(config.seconds * 1e9)
        tasks.append(asyncio.ensure_future(probe("start", window_start)))
        tasks.append(asyncio.ensure_future(probe("end", window_end)))

    shown = None if live is None else asyncio.ensure_future(live.show())
    try:
        m, failures, welcome = await run_load(config, on_start=on_start, watch=None if live is None else live.watch)
        if shown is not None:  # the drain is over: leave the last line, then the summary
            shown.cancel()
            await shown
        await asyncio.gather(*tasks)
        outcome = None
        if audit and not echo:  # an echo server has no ledger to audit
            try:
                reply = await admin.audit()
                outcome = AuditOutcome(reply.ok, reply.total_fen, reply.expected_fen, reply.negative_accounts)
            except (GatewayError, TimeoutError) as exc:
                failures.append(f"audit: {exc}")
        if not echo:
            # After the drain: the trove's figures against every transfer that reached the ledger,
            # once a flush running then has ended (its CPU per row is what the window is charged:
            # ``loadgen.plan.inputs.trove_window_ns``).
            await _flush_ended(admin, config.trove_flushes)
            await probe("final", 0)
    finally:
        for t in tasks:
            t.cancel()
        if shown is not None:
            shown.cancel()
        admin.close()
    cpu0, stats_start = probes.get("start", (None, {}))
    cpu1, stats_end = probes.get("end", (None, {}))
    stats_final = probes.get("final", (None, {}))[1]
    if cpu0 is None or cpu1 is None:  # no pid: the server's own figure, where it reports one
        cpu0, cpu1 = stats_start.get("process_cpu_s"), stats_end.get("process_cpu_s")
    result = build_result(
        kind=kind,
        m=m,
        config=config,
        environment=environment,
        welcome=welcome,
        failures=failures + probe_failures,
        stats_final=stats_final,
        scenario=scenario,
        server_pid=server_pid,
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        stats_start=stats_start,
        stats_end=stats_end,
        hooks=hook_cost(stats_start, stats_end),
        audit=outcome,
        echo=echo,
        targets=targets,
        external=external,
        server_args=server_args,
        machine=machine_cpu.window(machine.get("start"), machine.get("end")),
    )
    return msgspec.structs.replace(result, cpu_ns_per_payment=cpu_ns_per_payment(result))


#: How long the final probe waits for a trove flush running at the drain's end (a 4M-row memtable
#: takes seconds on a busy 2-core machine; the child runs at nice 10).
FLUSH_WAIT_S = 60.0


async def _flush_ended(admin: AdminClient, flushes: int = 0, timeout_s: float = FLUSH_WAIT_S) -> None:
    """Wait (polling the server's stats) while its trove's flusher is writing a memtable or has
    written fewer than ``flushes`` (``LoadConfig.trove_flushes``): no trove, a stopped trove or a
    stats failure returns at once; ``timeout_s`` bounds it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            trove = (await admin.stats()).get("trove") or {}
        except (GatewayError, TimeoutError):
            return
        if not trove or trove.get("failure"):
            return
        if not trove.get("flushing_rows") and int(trove.get("flushes", 0)) >= flushes:
            return
        await asyncio.sleep(0.1)


def run_measure(config: LoadConfig, **kwargs: Any) -> RunResult:
    """``measure`` on a fresh uvloop event loop; SIGTERM cancels it as cleanly as Ctrl-C does."""

    async def main() -> RunResult:
        task = asyncio.current_task()
        assert task is not None
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await measure(config, **kwargs)

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt("terminated") from None


def run_benchmark(
    config: LoadConfig,
    *,
    profile: str = "baseline",
    accounts: int = DEFAULT_ACCOUNTS,
    scenario: str | None = None,
    echo: bool = False,
    server_args: tuple[str, ...] = (),
    journal_dir: str | None = None,
    fsync: str = "batch",
    keep_journal: bool = False,
    validators: str | None = None,
    trove_dir: str | None = None,
    targets: CompareSettings | None = None,
    progress: Console | None = None,
) -> RunResult:
    """Start a server for ``profile``/``accounts``, run ``config`` against it (port ignored), audit, stop.

    A signed profile (``SIGNED_PROFILES``) makes the gateways send signed Submits; ``validators``
    is the server's ``--validators`` (default: the server's).

    ``journal_dir``: journal to a fresh file there under ``fsync`` (removed afterwards unless
    ``keep_journal``); ``config.secrets``: the server authenticates with those secrets (and
    enforces account ownership). ``trove_dir``: the server's ``--trove``.
    """
    check_accounts_fit(accounts, profile, scenario)  # in one line here, not in the server's stderr
    journal: Path | None = None
    if journal_dir is not None:
        Path(journal_dir).mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        journal = Path(journal_dir) / f"journal-{stamp}-{os.getpid()}-{profile}.cbj"
    if profile in SIGNED_PROFILES:
        config = msgspec.structs.replace(config, signed=True)
    if validators is not None:
        server_args = (*server_args, "--validators", validators)
    args = server_arguments(
        profile=profile,
        accounts=accounts,
        seed=config.seed,
        operators=config.operators,
        host=config.host,
        scenario=scenario,
        echo=echo,
        secrets=config.secrets,
        journal=journal,
        fsync=fsync,
        extra=server_args if trove_dir is None else (*server_args, "--trove", trove_dir),
    )
    try:
        with contextlib.ExitStack() as stack:
            with build_bar(progress, f"starting the server ({accounts:,} accounts)") as on_build:
                server = stack.enter_context(running_server(args, accounts=accounts, on_build=on_build))
            run_config = with_address(config, server.host, server.port)
            return run_measure(
                run_config,
                kind="run",
                server_pid=server.pid,
                audit=True,
                scenario=scenario,
                echo=echo,
                targets=targets,
                progress=progress,
                server_args=tuple(args),
            )
    finally:
        if journal is not None:
            remove_journal(journal, keep=keep_journal)


def remove_journal(journal: Path, *, keep: bool = False) -> None:
    """Delete a stopped server's own journal: its file, its segments (``J.seg-*``) and its
    snapshots (``J.snapshots``, the server's default), unless ``keep``; its lock file always.

    The lock file outlives the server (deleting it could race a starting server); a run's journal
    is its own, so its lock file goes with it. A journal left half-deleted (its snapshots without
    it) makes the next server of that path refuse to start, so all of it goes."""
    journal.with_name(journal.name + ".lock").unlink(missing_ok=True)
    if keep:
        return
    for _, segment in segment_files(journal):
        segment.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)
    shutil.rmtree(journal.with_name(journal.name + ".snapshots"), ignore_errors=True)


def with_address(config: LoadConfig, host: str, port: int) -> LoadConfig:
    return msgspec.structs.replace(config, host=host, port=port)
