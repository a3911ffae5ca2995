"""``cbdc-bench run``: start a server, load it open-loop, audit it, stop it, write one result file.

The server runs as a separate process (``cbdc-bench serve --port 0``, so generator and server do
not share an interpreter or a GIL); its printed ``listening on HOST:PORT`` line gives the port.
After the warm-up and the measured window, the conservation audit runs through the server, and
everything this command started is stopped, also on errors and Ctrl-C. With ``--echo`` the server
acknowledges without a ledger: a calibration run that shows whether the generator keeps its
schedule at a given rate.

The last line is the verdict, judged against the scenario's ``[compare]`` targets (p99 SLO and
minimum achieved ratio; defaults 20 ms and 99%), and the exit status is the verdict's: 0
sustained, 3 not sustained, 4 generator fell behind, 5 incomplete (README, "Verdicts").

The defaults (baseline profile, 1,000,000 accounts, 300,000 payments/s, 5 s warm-up, 30 s
measured) finish in about 40 s on a 2-core machine, server start-up included.

Durability and access control are off by default, as in every headline run. ``--journal DIR``
makes the server journal every batch to a fresh file in DIR under ``--fsync`` (removed after the
run unless ``--keep-journal``): the cost of durability, measured as its own comparison (the
result's server stats carry the policy, fsync count and time). ``--secrets FILE`` turns on
authentication and account ownership; the server then has exactly ``--operators`` operators, so
their account ranges cover the ledger and every gateway pays from its own range.

A profile whose ``surveillance_log`` keeps a trove (``surveillance``, ``full``) writes it to
``--trove DIR``, or to a fresh directory under ``--out`` (said on stderr); the result file
records its rows against the transfers that reached the ledger.

``--repeats N`` runs N times, each against a fresh server, into one directory under ``--out``
(``repeats-...``): the per-run summaries ``cbdc-bench diff`` tests for significance. The exit
status is the first failing run's.

``--target HOST:PORT`` loads a server that is already running (``cbdc-bench serve``, possibly on
another machine) instead of starting one: its own profile, accounts and options apply, and the
result file marks it external (its configuration, journal and audit were not under this run's
control; its CPU comes from its stats, the server process's CPU time, validator processes
excluded).

``--metrics-port PORT`` has the server serve Prometheus metrics on loopback while it runs
(``serve --metrics-port``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import msgspec

from engine.profiles import load_scenario, trove_needed
from loadgen.cli.common_args import (
    DEFAULT_ACCOUNTS,
    DEFAULT_RESULTS_DIR,
    add_accounts,
    add_hooks_path,
    add_journal,
    add_listen,
    add_load_arguments,
    add_metrics_port,
    add_profile,
    add_ramp,
    add_repeats,
    add_scenario,
    add_target,
    add_trove,
    add_validators,
    hooks_path_arguments,
    load_config,
    metrics_arguments,
    target_of,
    with_ramp,
)
from loadgen.cli.output import save_and_print
from loadgen.generator.gateway import LoadConfig
from loadgen.generator.progress import progress_console
from loadgen.harness.measured import run_benchmark, run_measure
from loadgen.model.train import ensure_profile_model
from loadgen.results.run import RunResult

#: Options that configure the server ``run`` starts, so meaningless with ``--target``.
_SERVER_OPTIONS = ("echo", "journal", "validators", "trove", "metrics_port", "hooks_path", "snapshot_every")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="start a server, load it, audit it, write a result file", description=__doc__)
    add_scenario(p, old_positional=True)
    add_profile(p)
    add_accounts(p, default=DEFAULT_ACCOUNTS)
    p.add_argument("--echo", action="store_true", help="calibration: the server acknowledges without a ledger")
    add_listen(p)
    add_journal(p)
    p.add_argument(
        "--snapshot-every",
        default=None,
        metavar="WHEN",
        help="with --journal: the server's --snapshot-every (payments or seconds, e.g. 200k); the result file's "
        "state then holds the newest snapshot's bytes per account, which the capacity plan reads (default: the "
        "server's)",
    )
    add_validators(p)
    add_hooks_path(p)
    add_metrics_port(p)
    add_repeats(p)
    add_ramp(p)
    add_target(
        p,
        what="a server that is already running (possibly on another machine), to load instead of starting one "
        "(its own profile and accounts apply; the result marks it external, its CPU only from its stats)",
        unset="none: start a server",
        old_aliases=False,
    )
    add_trove(p, keep=False)
    add_load_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    config = with_ramp(load_config(args, host=args.listen, port=0), args.ramp)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.target is not None:
        given = [f"--{name.replace('_', '-')}" for name in _SERVER_OPTIONS if getattr(args, name)]
        if given:
            raise ValueError(
                f"{', '.join(given)} configure the server that run starts; with --target the server is already "
                "running: give those options to its 'cbdc-bench serve'"
            )
        print(
            "--target: loading a server started elsewhere, with its own profile and accounts "
            "(--profile/--accounts do not apply); its CPU only from its stats",
            file=sys.stderr,
        )
    if args.target is None and not args.echo:
        ensure_profile_model(args.profile, args.scenario)
    if args.metrics_port is not None:
        if not 0 < args.metrics_port < 65_536:
            raise ValueError(f"--metrics-port must be in 1..65535 (a port to scrape), got {args.metrics_port}")
        print(f"metrics: http://127.0.0.1:{args.metrics_port}/metrics while the server runs", file=sys.stderr)
    out = args.out
    if args.repeats > 1:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        what = "target" if args.target else args.profile
        out = str(Path(out or DEFAULT_RESULTS_DIR) / f"repeats-{stamp}-{what}-{int(config.rate_tps)}tps")
    status = 0
    for repeat in range(1, args.repeats + 1):
        if args.repeats > 1:
            print(f"repeat {repeat}/{args.repeats}", file=sys.stderr, flush=True)
        result = _run_once(args, config, repeat)
        status = status or save_and_print(result, as_json=args.json, out=out)
    if args.repeats > 1:
        print(
            f"{args.repeats} runs in {out}; compare with another set: cbdc-bench diff {out} OTHER_DIR",
            file=sys.stderr,
        )
    return status


def _run_once(args: argparse.Namespace, config: LoadConfig, repeat: int) -> RunResult:
    """One run: against ``--target`` as it runs, or against a fresh server of its own."""
    targets = load_scenario(args.scenario).compare
    progress = progress_console(as_json=args.json)
    if args.target is not None:
        host, port = target_of(args)
        return run_measure(
            msgspec.structs.replace(config, host=host, port=port),
            kind="run",
            audit=True,
            scenario=args.scenario,
            targets=targets,
            progress=progress,
            external=True,
        )
    return run_benchmark(
        config,
        profile=args.profile,
        accounts=args.accounts,
        scenario=args.scenario,
        echo=args.echo,
        journal_dir=args.journal,
        fsync=args.fsync,
        keep_journal=args.keep_journal,
        validators=args.validators,
        server_args=hooks_path_arguments(args.hooks_path)
        + metrics_arguments(args.metrics_port)
        + (("--snapshot-every", args.snapshot_every) if args.snapshot_every else ()),
        trove_dir=_trove_dir(args, repeat),
        targets=targets,
        progress=progress,
    )


def _trove_dir(args: argparse.Namespace, repeat: int) -> str | None:
    """``--trove``, or (for a profile that keeps a trove) a fresh directory under ``--out``, said."""
    if args.trove is not None or args.echo or not trove_needed(args.profile, args.scenario):
        return args.trove
    stamp = time.strftime("%Y%m%dT%H%M%S")
    where = Path(args.out or DEFAULT_RESULTS_DIR) / f"trove-{stamp}-{os.getpid()}-{args.profile}-r{repeat}"
    print(f"trove: {where} (choose with --trove DIR)", file=sys.stderr, flush=True)
    return str(where)
