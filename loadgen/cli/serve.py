"""``cbdc-bench serve``: run the payment server until SIGINT or SIGTERM.

Prints ``listening on HOST:PORT`` on stdout once it accepts connections (with ``--port 0`` the port
is the one the system picked), so a parent process can wait for that line and parse it. Then
stderr says whether a journal is kept (and what recovery replayed) and whether
authentication is on.
"""

from __future__ import annotations

import argparse
import sys

from engine.options import add_struct_arguments, struct_from_args
from engine.profiles import profile_names, trove_needed
from engine.server import ServerConfig, serve
from loadgen.cli.common_args import add_hooks_path
from loadgen.model.train import ensure_profile_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the payment server (uvloop TCP, micro-batched ledger)", description=__doc__)
    add_struct_arguments(p, ServerConfig, context={"profiles": ", ".join(profile_names())})
    add_hooks_path(p)
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
    return serve(config)
