"""``cbdc-bench load``: open-loop load against a running server, measured from the schedule.

Latency is reply time minus *scheduled* time (never the actual send), so a stalled server or a
stalled generator shows up in the latency instead of silently thinning the load. The generator's
own lateness (send lag), and any transfers it never sent, are reported next to the latency: if
``generator kept schedule`` is false, the run measured the generator, not the server.

The last line is the verdict against the ``[compare]`` targets of ``--scenario`` (default: p99 <=
20 ms, 99% settled); the exit status is the verdict's: 0 sustained, 3 not sustained, 4 generator
fell behind, 5 incomplete. The load's options and defaults are ``run``'s; the result file goes
under ``./results/`` unless ``--out`` says otherwise. The payments are generated from the
scenario's ``[workload]`` (and its hooks' blacklist and caps), as ``run`` and ``engine`` generate
them: give ``load`` the scenario the server was started with.

A server running a signed profile (``signed``, ``signed-full``; its Welcome says which) gets
signed Submits, signed ahead of the schedule. ``--validators SPEC`` checks that the server
verifies them with that tier (``serve --validators``) and measures nothing otherwise.
"""

from __future__ import annotations

import argparse

from engine.profiles import load_scenario
from loadgen.cli.common_args import (
    add_load_arguments,
    add_ramp,
    add_scenario,
    add_target,
    add_validators,
    load_config,
    target_of,
    with_ramp,
)
from loadgen.cli.output import save_and_print
from loadgen.generator.progress import progress_console
from loadgen.harness.measured import run_measure


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="open-loop load against a running server", description=__doc__)
    add_target(p)
    p.add_argument(
        "--server-pid", type=int, default=None, help="server pid, to report its CPU from /proc (default: not reported)"
    )
    p.add_argument("--no-audit", action="store_true", help="skip the conservation audit after the run")
    add_scenario(p, what="the payments' [workload] (and the hooks' blacklist and caps) and the [compare] targets")
    add_validators(p, starts_server=False)
    add_load_arguments(p)
    add_ramp(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    host, port = target_of(args)
    config = with_ramp(load_config(args, host=host, port=port), args.ramp)
    targets = load_scenario(args.scenario).compare
    result = run_measure(
        config,
        kind="load",
        scenario=args.scenario,
        server_pid=args.server_pid,
        audit=not args.no_audit,
        targets=targets,
        progress=progress_console(as_json=args.json),
        external=True,
        validators=args.validators,
    )
    return save_and_print(result, as_json=args.json, out=args.out)
