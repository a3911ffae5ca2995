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


def account_counts(text: str) -> tuple[int, ...]:
    """``1e4,1e6,1.4e9`` -> account counts (a float form is accepted only where it is a whole number)."""
    counts = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        value = float(part)
        if value != int(value) or value < 2:
            raise argparse.ArgumentTypeError(f"{part!r} is not a whole number of accounts >= 2")
        counts.append(int(value))
    return tuple(counts)


def add_scale_options(p: argparse.ArgumentParser, *, sizes: Sequence[int]) -> None:
    """The ``scale`` benchmark's sizes, profiles, trials, end-to-end sizes and huge-page switch."""
    shown = ",".join(f"{n:.0e}".replace("e+0", "e") for n in sizes)
    p.add_argument("--sizes", type=account_counts, default=tuple(sizes), help=f"account counts (default {shown})")
    p.add_argument(
        "--profiles",
        type=lambda s: tuple(s.split(",")),
        default=("baseline", "full"),
        help="profiles (default baseline,full)",
    )
    p.add_argument("--trials", type=int, default=3, help="engine trials per size and profile (default 3)")
    p.add_argument(
        "--e2e-sizes", type=account_counts, default=(), help="sizes that also get the end-to-end search (default none)"
    )
    p.add_argument("--no-hugepages", action="store_true", help="turn off numpy's madvise(MADV_HUGEPAGE) to compare")
    p.add_argument("--append", action="store_true", help="add to OUT/scale.json instead of replacing it")
