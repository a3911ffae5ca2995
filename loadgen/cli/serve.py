"""``cbdc-bench serve``: run the payment server until SIGINT or SIGTERM.

Prints ``listening on HOST:PORT`` on stdout once it accepts connections (with ``--port 0`` the port
is the one the system picked), so a parent process can wait for that line and parse it. Then
stderr says whether a journal is kept (and what recovery replayed) and whether
authentication is on.

Before that, building a large ledger takes a while (10^8 accounts: tens of seconds). ``--progress``
says how to show it: ``bar`` draws a bar per phase (accounts, hooks, journal) with its fraction
and the time left on stderr, ``json`` writes each step as a JSON line on stdout before the
``listening on`` line (``loadgen.generator.progress_build``: what ``run`` reads), ``off`` shows
nothing; ``auto`` (the default) is ``bar`` when stderr is a terminal, else ``off``.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from engine.options import add_struct_arguments, struct_from_args
from engine.profiles import profile_names, trove_needed
from engine.server import ServerConfig, serve
from loadgen.cli.common_args import add_hooks_path
from loadgen.generator.progress import progress_console
from loadgen.generator.progress_build import build_bar, json_lines
from loadgen.model.train import ensure_profile_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the payment server (uvloop TCP, micro-batched ledger)", description=__doc__)
    add_struct_arguments(p, ServerConfig, context={"profiles": ", ".join(profile_names())})
    add_hooks_path(p)
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "json", "off"),
        default="auto",
        help="start-up progress: a bar on stderr, JSON lines on stdout before 'listening on' (for a parent "
        "process), or nothing (default auto: a bar when stderr is a terminal)",
    )
    p.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return struct_from_args(ServerConfig, args)


def _main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not config.trove and not config.echo and trove_needed(config.profile, config.scenario):
        print(
            f"serve: profile {config.profile!r} keeps a surveillance trove (surveillance_log in trove mode); "
            "give it a directory with --trove DIR (it is kept across restarts). Nothing was started.",
            file=sys.stderr,
        )
        return 2
    if not config.echo:
        ensure_profile_model(config.profile, config.scenario)
    if args.progress == "json":
        return serve(config, progress=json_lines(sys.stdout))
    console = {"bar": Console(stderr=True), "auto": progress_console(as_json=False)}.get(args.progress)
    with build_bar(console, f"starting: {config.accounts:,} accounts") as bar:
        return serve(config, progress=bar)
