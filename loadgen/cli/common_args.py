"""Options that more than one subcommand takes, each defined once (as asv's ``commands/common_args``).

A command passes its own default where the commands differ (``compare`` leaves most of them
unset so its plan decides); the option's name, type and meaning are the same everywhere.
``serve`` is not among the users: its options follow ``engine.server.ServerConfig``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import msgspec

from engine.profiles import profile_names
from loadgen.generator.gateway import LoadConfig
from loadgen.generator.schedule import Arrival
from loadgen.generator.workload import DEFAULT_SEED


def add_scenario(p: argparse.ArgumentParser, *, positional: bool, what: str = "profile definitions") -> None:
    """The TOML scenario file: a positional argument of ``run``/``compare``, ``--scenario`` of ``engine``."""
    help_text = f"TOML scenario file with {what}"
    if positional:
        p.add_argument("scenario", nargs="?", default=None, help=help_text)
    else:
        p.add_argument("--scenario", default=None, help=help_text)


def add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile", default="baseline", help=f"hook profile (default baseline; shipped: {', '.join(profile_names())})"
    )


def add_accounts(p: argparse.ArgumentParser, *, default: int | None) -> None:
    shown = f"{default:,}" if default is not None else "1,000,000"
    p.add_argument("--accounts", type=int, default=default, help=f"ledger accounts (default {shown})")


def add_seed(p: argparse.ArgumentParser, *, what: str = "workload and schedule") -> None:
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the {what}")


def add_seconds(p: argparse.ArgumentParser, *, default: float, what: str = "measured seconds") -> None:
    p.add_argument("--seconds", type=float, default=default, help=f"{what} (default {default:g})")


def add_warmup(
    p: argparse.ArgumentParser, *, default: float | None, what: str = "seconds run before measuring"
) -> None:
    shown = f" (default {default:g})" if default is not None else ""
    p.add_argument("--warmup", type=float, default=default, help=what + shown)


def add_drain(p: argparse.ArgumentParser, *, default: float | None) -> None:
    shown = f" (default {default:g})" if default is not None else ""
    p.add_argument("--drain", type=float, default=default, help="seconds to wait for late replies" + shown)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def add_out(
    p: argparse.ArgumentParser, *, default: str | None, when_unset: str, what: str = "output directory"
) -> None:
    p.add_argument("--out", default=default, help=f"{what} (default {default or when_unset})")


def add_host(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument("--host", default="127.0.0.1", help=f"{what} (default 127.0.0.1: loopback)")


def add_journal(p: argparse.ArgumentParser) -> None:
    """``--journal DIR``, ``--fsync``, ``--keep-journal`` of a command that starts its own server."""
    p.add_argument("--journal", default=None, metavar="DIR", help="journal every batch to a fresh file in DIR")
    p.add_argument("--fsync", default="batch", help="journal fsync policy: batch, interval:MS or off (default batch)")
    p.add_argument("--keep-journal", action="store_true", help="keep the journal file after the run")


def add_trove(p: argparse.ArgumentParser, *, keep: bool) -> None:
    """``--trove DIR`` (and ``--keep-trove``) of a command that starts its own server."""
    p.add_argument(
        "--trove",
        default=None,
        metavar="DIR",
        help="where a trove-mode surveillance_log (surveillance, full) keeps its trove "
        + ("(default OUT/troves), one directory per server" if keep else "(default: a fresh directory under --out)"),
    )
    if keep:
        p.add_argument("--keep-trove", action="store_true", help="keep each trial's trove after it")


def add_load_arguments(
    p: argparse.ArgumentParser, *, rate: float, seconds: float, warmup: float, out: str | None = None
) -> None:
    """The options of one open-loop load (``LoadConfig``), shared by ``load`` and ``run``."""
    p.add_argument("--rate", type=float, default=rate, help=f"offered payments/s, all gateways (default {rate:,.0f})")
    add_seconds(p, default=seconds)
    add_warmup(p, default=warmup)
    p.add_argument("--operators", type=int, default=2, help="operator gateways, one connection each (default 2)")
    p.add_argument("--processes", type=int, default=1, help="generator processes sharing the gateways (default 1)")
    p.add_argument("--arrival", choices=[a.value for a in Arrival], default="constant", help="arrival process")
    p.add_argument("--tick-us", type=int, default=0, help="send tick in us (default 0 = auto: ~1,000/frame, 1-5 ms)")
    p.add_argument("--batch-max", type=int, default=8192, help="most transfers per frame (default 8192)")
    add_drain(p, default=5.0)
    add_seed(p)
    p.add_argument(
        "--secrets",
        default="",
        metavar="FILE",
        help="secrets for a server with authentication on (TOML file, or 'env'); default: none",
    )
    add_json(p)
    add_out(p, default=out, when_unset="none: not written", what="directory for the result file")


def load_config(args: argparse.Namespace, *, host: str, port: int) -> LoadConfig:
    """The ``LoadConfig`` of ``add_load_arguments``' options; a bad value is a ``ValueError``."""
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


def add_hooks_path(p: argparse.ArgumentParser) -> None:
    """``--hooks-path DIR``: where a user's own hooks (``module:attribute`` in a profile) are imported from."""
    p.add_argument(
        "--hooks-path",
        action="append",
        default=[],
        metavar="DIR",
        help="directory to import own hooks ('module:attribute') from, searched before the working directory "
        "(which is always searched); repeatable; passed on to the server a command starts",
    )


def use_hooks_path(dirs: Sequence[str]) -> list[str]:
    """Put ``dirs`` and then the working directory first on ``sys.path``; their absolute paths.

    One import rule for every command: ``cbdc-bench`` (an entry-point script) does not put the
    working directory on the path as ``python -m`` does, so without this a hook module next to
    the scenario loaded under one command and not under another. Called once per process, by
    ``main`` (the server child of ``run``/``compare`` gets the directories as ``--hooks-path``).
    """
    absolute = [os.path.abspath(d) for d in dirs]
    for d in absolute:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"--hooks-path {d}: no such directory")
    for d in reversed([*absolute, os.getcwd()]):
        if d in sys.path:
            sys.path.remove(d)
        sys.path.insert(0, d)
    return absolute


def hooks_path_arguments(dirs: Sequence[str]) -> tuple[str, ...]:
    """The ``serve`` arguments that give a server child the same ``--hooks-path`` directories."""
    return tuple(arg for d in dirs for arg in ("--hooks-path", os.path.abspath(d)))


def add_metrics_port(p: argparse.ArgumentParser) -> None:
    """``--metrics-port PORT`` of a command that starts its own server: the server's ``serve --metrics-port``."""
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="the server serves Prometheus metrics at http://127.0.0.1:PORT/metrics while it runs (loopback only: "
        "the figures cover every operator; default: no endpoint)",
    )


def metrics_arguments(port: int | None) -> tuple[str, ...]:
    """The ``serve`` arguments for ``--metrics-port`` (none without it)."""
    return () if port is None else ("--metrics-port", str(port))


def add_alpha(p: argparse.ArgumentParser, *, default: float) -> None:
    """``--alpha``: the significance level of a statistical test."""
    p.add_argument(
        "--alpha", type=float, default=default, help=f"significance level of the two-sided test (default {default:g})"
    )


def add_repeats(p: argparse.ArgumentParser) -> None:
    """``--repeats N`` of ``run``: N runs, each with a fresh server, into one directory for ``diff``."""
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="run N times, each against a fresh server, writing the results to one directory under --out "
        "(compare two such directories with 'cbdc-bench diff'; default 1)",
    )


def add_target(p: argparse.ArgumentParser) -> None:
    """``--target HOST:PORT``: load a server that is already running instead of starting one."""
    p.add_argument(
        "--target",
        default=None,
        metavar="HOST:PORT",
        help="load a server that is already running ('cbdc-bench serve', possibly on another machine) instead "
        "of starting one; its own profile and accounts apply, and the result marks it external (its CPU only "
        "from its stats)",
    )


def target_address(target: str) -> tuple[str, int]:
    """``--target``'s (host, port); a ``ValueError`` saying the expected form otherwise."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65_536:
        raise ValueError(f"--target must be HOST:PORT (the address 'cbdc-bench serve' printed), got {target!r}")
    return host.strip("[]"), int(port)
