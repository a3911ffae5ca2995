"""``cbdc-bench load``: open-loop load against a running server, measured from the schedule.

Latency is reply time minus *scheduled* time (never the actual send), so a stalled server or a
stalled generator shows up in the latency instead of silently thinning the load. The generator's
own lateness (send lag), and any transfers it never sent, are reported next to the latency: if
``generator kept schedule`` is false, the run measured the generator, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec

from loadgen.admin import AdminClient
from loadgen.environment import collect
from loadgen.gateway import GatewayError, LoadConfig, new_event_loop, run_load
from loadgen.results import AuditOutcome, RunResult, build_result, save
from loadgen.schedule import Arrival
from loadgen.workload import DEFAULT_SEED


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
) -> RunResult:
    """Run the load, probing server stats and CPU at the measured window's edges; audit after."""
    admin = AdminClient(config.host, config.port, secrets=config.secrets)
    server_welcome = await admin.connect()
    echo = echo or server_welcome.echo
    probes: dict[str, tuple[float | None, dict[str, Any]]] = {}
    probe_failures: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def probe(name: str, at_ns: int) -> None:
        delay = (at_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        cpu = process_cpu_s(server_pid) if server_pid is not None else None
        try:
            stats = await admin.stats()
        except (GatewayError, TimeoutError) as exc:
            probe_failures.append(f"server stats at {name}: {exc}")
            stats = {}
        probes[name] = (cpu, stats)

    def on_start(start_ns: int) -> None:
        window_start = start_ns + int(config.warmup * 1e9)
        window_end = window_start + int(config.seconds * 1e9)
        tasks.append(asyncio.ensure_future(probe("start", window_start)))
        tasks.append(asyncio.ensure_future(probe("end", window_end)))

    try:
        m, failures, welcome = await run_load(config, on_start=on_start)
        await asyncio.gather(*tasks)
        outcome = None
        if audit and not echo:  # an echo server has no ledger to audit
            try:
                reply = await admin.audit()
                outcome = AuditOutcome(reply.ok, reply.total_fen, reply.expected_fen, reply.negative_accounts)
            except (GatewayError, TimeoutError) as exc:
                failures.append(f"audit: {exc}")
    finally:
        for t in tasks:
            t.cancel()
        admin.close()
    cpu0, stats_start = probes.get("start", (None, {}))
    cpu1, stats_end = probes.get("end", (None, {}))
    return build_result(
        kind=kind,
        m=m,
        config=config,
        environment=collect(),
        welcome=welcome,
        failures=failures + probe_failures,
        scenario=scenario,
        server_pid=server_pid,
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        stats_start=stats_start,
        stats_end=stats_end,
        hooks=hook_cost(stats_start, stats_end),
        audit=outcome,
        echo=echo,
    )


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


# ---- command line ----------------------------------------------------------------------------


def add_load_arguments(
    p: argparse.ArgumentParser, *, rate: float, seconds: float, warmup: float, out: str | None = None
) -> None:
    """The load options shared by ``load`` and ``run``."""
    p.add_argument("--rate", type=float, default=rate, help=f"offered payments/s, all gateways (default {rate:,.0f})")
    p.add_argument("--seconds", type=float, default=seconds, help=f"measured seconds (default {seconds:g})")
    p.add_argument("--warmup", type=float, default=warmup, help=f"seconds run before measuring (default {warmup:g})")
    p.add_argument("--operators", type=int, default=2, help="operator gateways, one connection each (default 2)")
    p.add_argument("--processes", type=int, default=1, help="generator processes sharing the gateways (default 1)")
    p.add_argument("--arrival", choices=[a.value for a in Arrival], default="constant", help="arrival process")
    p.add_argument("--tick-us", type=int, default=0, help="send tick in us (default 0 = auto: ~1,000/frame, 1-5 ms)")
    p.add_argument("--batch-max", type=int, default=8192, help="most transfers per frame (default 8192)")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for replies after the schedule")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="workload and schedule seed")
    p.add_argument(
        "--secrets",
        default="",
        metavar="FILE",
        help="secrets for a server with authentication on (TOML file, or 'env'); default: none",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--out", default=out, help=f"directory for the result file (default {out or 'none: not written'})")


def config_from_args(args: argparse.Namespace, *, host: str, port: int) -> LoadConfig:
    try:
        return LoadConfig(
            host=host,
            port=port,
            rate_tps=args.rate,
            seconds=args.seconds,
            warmup=args.warmup,
            operators=args.operators,
            processes=args.processes,
            arrival=args.arrival,
            tick_us=args.tick_us,
            batch_max=args.batch_max,
            drain=args.drain,
            seed=args.seed,
            secrets=args.secrets,
        )
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from exc


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="open-loop load against a running server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True, help="server port")
    p.add_argument("--server-pid", type=int, default=None, help="server pid, to report its CPU from /proc")
    p.add_argument("--no-audit", action="store_true", help="skip the conservation audit after the run")
    add_load_arguments(p, rate=50_000, seconds=10, warmup=2)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    config = config_from_args(args, host=args.host, port=args.port)
    result = run_measure(config, kind="load", server_pid=args.server_pid, audit=not args.no_audit)
    return report(result, as_json=args.json, out=args.out)


def report(result: RunResult, *, as_json: bool, out: str | None) -> int:
    """Save (if ``out``), print, and give the exit code: 0 only for a clean run."""
    path = save(result, out) if out is not None else None
    if as_json:
        summary = msgspec.to_builtins(result.summary)
        if path is not None:
            summary["result_file"] = str(path)
        print(json.dumps(summary))
    else:
        print(format_summary(result))
        if path is not None:
            print(f"result file: {path}")
    clean = not result.failures and result.summary.audit_ok is not False and result.counts.protocol_errors == 0
    return 0 if clean else 1


def format_summary(r: RunResult) -> str:
    s, c, g = r.summary, r.counts, r.generator
    lat = r.latency
    lines = [
        f"profile {s.profile}{' (echo: no ledger)' if s.echo else ''}: offered {s.offered_tps:,.0f}/s, "
        f"achieved {s.achieved_tps:,.0f}/s ({s.achieved_ratio:.1%}), goodput {s.goodput_tps:,.0f}/s "
        f"over {s.seconds:g} s measured, {s.accounts:,} accounts",
        f"latency from schedule (ms): p50 {lat.p50_ms:.2f}  p90 {lat.p90_ms:.2f}  p99 {lat.p99_ms:.2f}  "
        f"p99.9 {lat.p999_ms:.2f}  p99.99 {lat.p9999_ms:.2f}  max {lat.max_ms:.2f}  ({lat.count:,} transfers)",
        f"generator: {g.processes} process(es), {g.operators} operator gateways, tick {g.tick_us / 1000:g} ms; "
        f"send lag p99 {g.send_lag.p99_ms:.2f} ms, max {g.send_lag.max_ms:.2f} ms; late {c.late:,}, "
        f"unsent {c.unsent:,}; {'kept its schedule' if g.kept_schedule else 'DID NOT keep its schedule'}",
        f"sent {c.sent:,} in {c.frames_sent:,} frames, results {c.results:,}, unanswered {c.unanswered:,}, "
        f"frame errors {c.error_transfers:,}",
        "results: " + ", ".join(f"{k} {v:,}" for k, v in sorted(r.codes.items(), key=lambda kv: -kv[1])),
    ]
    cpu = f"generator CPU {g.cpu_s:.2f} s"
    if r.server.cpu_s is not None:
        cpu += f", server CPU {r.server.cpu_s:.2f} s"
    lines.append(f"{cpu} over the {s.seconds:g} s measured window")
    hooks = {k: v.get("ns_per_transfer") for k, v in r.server.hooks.items() if isinstance(v, dict)}
    if any(v is not None for v in hooks.values()):
        lines.append(
            "hook cost (ns/transfer): " + ", ".join(f"{k} {v:,.0f}" for k, v in hooks.items() if v is not None)
        )
    d = r.server.durability
    if not s.echo:
        lines.append(
            "durability: no journal (acknowledged in memory only)"
            if d.fsync == "none"
            else f"durability: journal, fsync {d.fsync}: {d.fsyncs_per_s:,.0f} fsyncs/s taking "
            f"{d.fsync_ms_per_s:,.1f} ms/s, {d.journal_mb_per_s:,.1f} MB/s written"
        )
    if s.audit_ok is not None and r.audit is not None:
        lines.append(
            f"audit: {'ok' if s.audit_ok else 'FAILED'} (total {r.audit.total_fen:,} fen, expected "
            f"{r.audit.expected_fen:,}, negative accounts {r.audit.negative_accounts})"
        )
    lines += [f"problem: {f}" for f in r.failures]
    return "\n".join(lines)
