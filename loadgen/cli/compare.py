"""``cbdc-bench compare``: the maximum sustainable rate of every hook profile, and equal-load runs.

For each profile, a search (``loadgen.harness.search``) finds the highest offered rate at which the
system sustains the scenario's SLO (the ``sustained`` verdict of ``run``: achieved >= 99% of
scheduled, shed transfers not counted, p99 latency from the schedule <= ``[compare] slo_p99_ms``),
confirmed by runs at 95% and 105% of it. A phase that cannot be judged (verdict ``incomplete``)
stops the comparison with exit status 5; other failures exit 1. Then every profile runs at
common rates (the scenario's ``common_rates_tps`` and the lowest maximum any profile sustained)
so that latencies compare at equal load.

Server reuse: each (repeat, profile) gets one fresh ``serve`` process, and all of that session's
load phases run against it, each with its own warm-up; phases are separated by waiting until the
server's queue is empty. Generators continue the server's transfer ids and simulated clock
(``Welcome.next_transfer_id``), so a later phase is not answered ``duplicate``. A fresh process
per repeat keeps process-level effects (allocation, caches) inside the run-to-run spread.

Drift: the order of profiles is shuffled anew for every repeat, for the searches and again for
the equal-load runs (and the rates within each session), from ``--seed``, so a machine that
slows down over time does not systematically favour the profile that runs first.

Every phase's result file goes to ``OUT/runs/``; ``OUT/compare.json`` lists them with their
roles; the report (``OUT/report.md`` and ``OUT/*.png``) is built from those files at the end, as
``cbdc-bench report OUT`` would.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import msgspec

from engine.profiles import CompareSettings, load_scenario
from loadgen.cli.common_args import (
    add_accounts,
    add_drain,
    add_hooks_path,
    add_journal,
    add_out,
    add_resume,
    add_reuse_server,
    add_scenario,
    add_seed,
    add_target,
    add_trove,
    add_validators,
    add_warmup,
    hooks_path_arguments,
    parse_seconds,
    validators_arguments,
)
from loadgen.harness.compare import FULL, QUICK, CompareError, run_compare
from loadgen.harness.resume import load_plan
from loadgen.results.compare import Plan


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="max sustainable rate of every hook profile, equal-load runs, report",
        description=__doc__,
    )
    add_scenario(p, what="profiles and [compare] settings", old_positional=True)
    add_hooks_path(p)
    p.add_argument("--profiles", nargs="+", default=None, help="profiles to compare (default: all of the scenario's)")
    p.add_argument("--quick", action="store_true", help="about 10 minutes on 2 cores: short phases, 2 repeats")
    p.add_argument(
        "--repeats", type=int, default=None, help="repeats of every search and equal-load run (default: the plan's)"
    )
    add_seed(p, what="profile order and the workload")
    add_out(p, default=None, when_unset="results/compare-STAMP-MODE")
    add_trove(p, keep=True)
    add_journal(p)
    add_accounts(p, default=None, unset="the plan's")
    p.add_argument(
        "--search-seconds",
        type=parse_seconds,
        default=None,
        metavar="T",
        help="measured seconds per search trial (default: the plan's)",
    )
    p.add_argument(
        "--equal-seconds",
        type=parse_seconds,
        default=None,
        metavar="T",
        help="measured seconds per equal-load run (default: the plan's)",
    )
    add_warmup(p, default=None, what="warm-up seconds of every phase", unset="the plan's")
    add_drain(p, default=None, unset="the plan's")
    p.add_argument(
        "--steal-retries",
        type=int,
        default=0,
        metavar="N",
        help="measure a phase again, up to N times, while the host's steal took 5%% or more of the cores over its "
        "window; the least-stolen attempt is kept (default 0)",
    )
    add_validators(p, starts_server=True)
    p.add_argument("--calibrate", action="store_true", help="also search the echo server (the harness's ceiling)")
    p.add_argument("--no-report", action="store_true", help="write the result files and summary only")
    add_resume(p)
    add_target(
        p,
        what="with --reuse-server: search the profile of this running server, every trial against it",
        unset="none: a fresh server per profile and repeat",
        old_aliases=False,
    )
    add_reuse_server(p)
    p.set_defaults(func=_main)


def plan_from_args(args: argparse.Namespace, settings: CompareSettings) -> Plan:
    base = QUICK if args.quick else msgspec.structs.replace(FULL, precision=settings.precision)
    changes: dict[str, object] = {}
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    if args.accounts is not None:
        changes["accounts"] = args.accounts
    if args.search_seconds is not None:
        changes["search_seconds"] = args.search_seconds
    if args.equal_seconds is not None:
        changes["equal_seconds"] = args.equal_seconds
    if args.warmup is not None:
        changes["search_warmup_s"] = changes["equal_warmup_s"] = args.warmup
    if args.drain is not None:
        changes["drain_s"] = args.drain
    if args.steal_retries:
        changes["steal_retries"] = args.steal_retries
    if changes:
        changes["mode"] = f"{base.mode} (custom)"
    try:
        return msgspec.structs.replace(base, **changes)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from exc


def _main(args: argparse.Namespace) -> int:
    if args.target is not None and not args.reuse_server:
        raise ValueError(
            "compare starts a fresh server for every profile and repeat (no state carried from one trial to the "
            "next), so it does not load a server that is already running unless you pass --reuse-server too (the "
            "report then says its trials were not independent); or use 'run --target HOST:PORT --repeats N' and "
            "'cbdc-bench diff'"
        )
    if args.target is not None and args.journal is not None:
        raise ValueError("--journal applies to the servers compare starts, not to a --target it loads")
    if args.reuse_server and args.target is None:
        raise ValueError("--reuse-server goes with --target HOST:PORT (the server to reuse)")
    if args.resume is not None:
        # The interrupted comparison's own arguments: the same program, so its phases replay.
        asked = load_plan(Path(args.resume))
        scenario, profiles, plan, seed, calibrate = (
            asked.scenario,
            asked.profiles,
            asked.plan,
            asked.seed,
            asked.calibrate,
        )
        out: str | None = args.resume
    else:
        scenario, profiles, seed, calibrate, out = args.scenario, args.profiles, args.seed, args.calibrate, args.out
        plan = plan_from_args(args, load_scenario(args.scenario).compare)
    command = "cbdc-bench " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["compare"] else "cbdc-bench compare"
    try:
        run_compare(
            scenario,
            profiles=profiles,
            plan=plan,
            seed=seed,
            out=out,
            calibrate=calibrate,
            resume=args.resume is not None,
            target=args.target,
            command=command,
            make_report=not args.no_report,
            server_args=hooks_path_arguments(args.hooks_path) + validators_arguments(args.validators),
            trove=args.trove,
            keep_trove=args.keep_trove,
            journal=args.journal,
            fsync=args.fsync,
            keep_journal=args.keep_journal,
        )
    except CompareError as exc:
        print(f"cbdc-bench compare: {exc}", file=sys.stderr)
        return exc.exit_status
    return 0
