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
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from engine.profiles import load_scenario, trove_needed
from loadgen.cli.common_args import (
    DEFAULT_ACCOUNTS,
    DEFAULT_RESULTS_DIR,
    add_accounts,
    add_hooks_path,
    add_journal,
    add_listen,
    add_load_arguments,
    add_profile,
    add_scenario,
    add_trove,
    add_validators,
    hooks_path_arguments,
    load_config,
)
from loadgen.cli.output import save_and_print
from loadgen.harness.measured import run_benchmark


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="start a server, load it, audit it, write a result file", description=__doc__)
    add_scenario(p, old_positional=True)
    add_profile(p)
    add_accounts(p, default=DEFAULT_ACCOUNTS)
    p.add_argument("--echo", action="store_true", help="calibration: the server acknowledges without a ledger")
    add_listen(p)
    add_journal(p)
    add_validators(p)
    add_hooks_path(p)
    add_trove(p, keep=False)
    add_load_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    config = load_config(args, host=args.listen, port=0)
    result = run_benchmark(
        config,
        profile=args.profile,
        accounts=args.accounts,
        scenario=args.scenario,
        echo=args.echo,
        journal_dir=args.journal,
        fsync=args.fsync,
        keep_journal=args.keep_journal,
        validators=args.validators,
        server_args=hooks_path_arguments(args.hooks_path),
        trove_dir=_trove_dir(args),
        targets=load_scenario(args.scenario).compare,
    )
    return save_and_print(result, as_json=args.json, out=args.out)


def _trove_dir(args: argparse.Namespace) -> str | None:
    """``--trove``, or (for a profile that keeps a trove) a fresh directory under ``--out``, said."""
    if args.trove is not None or args.echo or not trove_needed(args.profile, args.scenario):
        return args.trove
    where = (
        Path(args.out or DEFAULT_RESULTS_DIR) / f"trove-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{args.profile}"
    )
    print(f"trove: {where} (choose with --trove DIR)", file=sys.stderr, flush=True)
    return str(where)
