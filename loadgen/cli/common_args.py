"""Options that more than one subcommand takes, each defined once (as asv's ``commands/common_args``).

One vocabulary for every command (issue 12):

* ``--scenario FILE`` everywhere (the old positional of ``run``/``compare`` still works, deprecated);
* ``--max-batch N``: most transfers per batch, the server's (``serve``), per frame (``load``,
  ``run``) or per engine batch (``engine``); old ``--batch`` and ``--batch-max`` are deprecated;
* ``--listen ADDR``: the address a server this command runs listens on (``serve``, ``run``);
  ``--target HOST:PORT``: a server this command connects to (``load``; old ``--host``/``--port``
  are deprecated there). They never mean each other;
* ``--accounts 1.4e9``/``1400M``, ``--rate 300k``/``1.2M``, ``--seconds 30s``/``2m``: every
  count, rate and duration takes human suffixes (``engine.options``);
* ``load`` and ``run`` share their defaults (the headline load: 300,000/s, 30 s, 5 s warm-up), and
  both write their result file under ``./results/`` unless ``--out`` says otherwise;
* every default is shown in ``--help`` (``HelpFormatter``), without reST markup.

A command passes its own default only where the commands really differ (``compare`` leaves the
phase lengths unset so its plan decides); the option's name, type and meaning are the same
everywhere. ``serve``'s options are generated from ``engine.server.ServerConfig`` with the same
parsers and aliases (``engine.options``). Old spellings stay one version as hidden aliases that
print one deprecation line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from engine.options import add_deprecated_alias, parse_count, parse_rate, parse_seconds
from engine.profiles import load_scenario, profile_names
from engine.validators import parse_validators
from loadgen.generator.gateway import LoadConfig
from loadgen.generator.ramp import parse_ramp, ramp_peak_tps
from loadgen.generator.schedule import Arrival
from loadgen.generator.workload import DEFAULT_SEED, ScenarioWorkload
from loadgen.harness.measured import DEFAULT_ACCOUNTS, DEFAULT_RATE_TPS, DEFAULT_SECONDS, DEFAULT_WARMUP

DEFAULT_MAX_BATCH = 8192
#: Where ``run`` and ``load`` write result files (ignored by git).
DEFAULT_RESULTS_DIR = "results"
LOOPBACK = "127.0.0.1"

__all__ = ["DEFAULT_ACCOUNTS", "parse_count", "parse_rate", "parse_seconds"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written (paragraphs), without reST markup, and every default shown.

    An option whose help does not already say its default gets ``(default X)``; switches and
    options without a default say nothing (their help says what leaving them out means).
    """

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain(action.help or "")
        shown = not any(action.default is v for v in (None, False, True, argparse.SUPPRESS)) and action.nargs != 0
        if shown and "default" not in text and action.option_strings:
            default = action.default
            value = (
                f"{default:,}"
                if isinstance(default, int)
                else f"{default:g}"
                if isinstance(default, float)
                else default
            )
            text += f" (default {value})".replace("%", "%%")
        return text


def plain(text: str) -> str:
    """``text`` without reST inline markup: ``code`` and `role` become plain words."""
    return re.sub(r"`+([^`]*)`+", r"\1", text)


def version_string() -> str:
    try:
        return "cbdc-bench " + importlib.metadata.version("cbdc-bench")
    except importlib.metadata.PackageNotFoundError:
        return "cbdc-bench (not installed: version unknown)"


def add_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=version_string())


def add_scenario(
    p: argparse.ArgumentParser, *, what: str = "profile definitions", old_positional: bool = False
) -> None:
    """``--scenario FILE``; ``old_positional`` keeps the former positional argument as a deprecated alias."""
    p.add_argument(
        "--scenario", default=None, metavar="FILE", help=f"TOML scenario file with {what} (default: the shipped one)"
    )
    if old_positional:
        p.add_argument("scenario", nargs="?", new="--scenario FILE", action=_DeprecatedPositional)


class _DeprecatedPositional(argparse.Action):
    """The scenario given as a positional argument (before ``--scenario``): still read, deprecated."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        if values in (None, argparse.SUPPRESS):
            return
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"the scenario is given twice ({getattr(namespace, self.dest)} and {values}); use {self.new}")
        print(f"{parser.prog}: a positional scenario file is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile", default="baseline", help=f"hook profile (default baseline; shipped: {', '.join(profile_names())})"
    )


def add_accounts(p: argparse.ArgumentParser, *, default: int | None, unset: str = "") -> None:
    shown = f"{default:,}" if default is not None else unset
    p.add_argument(
        "--accounts",
        type=parse_count,
        default=default,
        metavar="N",
        help=f"ledger accounts, e.g. 20000, 1.4e9 or 1400M (default {shown})",
    )


def add_seed(p: argparse.ArgumentParser, *, what: str = "workload and schedule") -> None:
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the {what} (default {DEFAULT_SEED})")


def add_seconds(p: argparse.ArgumentParser, *, default: float, what: str = "measured seconds") -> None:
    p.add_argument(
        "--seconds",
        type=parse_seconds,
        default=default,
        metavar="T",
        help=f"{what}, e.g. 30, 30s, 2m (default {default:g})",
    )


def add_warmup(
    p: argparse.ArgumentParser, *, default: float | None, what: str = "seconds run before measuring", unset: str = ""
) -> None:
    shown = f"{default:g}" if default is not None else unset
    p.add_argument("--warmup", type=parse_seconds, default=default, metavar="T", help=f"{what} (default {shown})")


def add_drain(p: argparse.ArgumentParser, *, default: float | None, unset: str = "") -> None:
    shown = f"{default:g}" if default is not None else unset
    p.add_argument(
        "--drain",
        type=parse_seconds,
        default=default,
        metavar="T",
        help=f"seconds to wait for late replies (default {shown})",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def add_out(
    p: argparse.ArgumentParser,
    *,
    default: str | None,
    when_unset: str = "",
    what: str = "output directory",
    metavar: str = "DIR",
) -> None:
    p.add_argument("--out", default=default, metavar=metavar, help=f"{what} (default {default or when_unset})")


def add_max_batch(p: argparse.ArgumentParser, *, what: str, old: str) -> None:
    """``--max-batch N`` (dest ``max_batch``), and the command's old spelling ``old`` as a deprecated alias."""
    p.add_argument(
        "--max-batch", type=parse_count, default=DEFAULT_MAX_BATCH, metavar="N", help=f"most transfers per {what}"
    )
    add_deprecated_alias(p, old, new="--max-batch", dest="max_batch", type=parse_count)


def add_listen(
    p: argparse.ArgumentParser, *, what: str = "address for the server this command starts to listen on"
) -> None:
    """``--listen ADDR`` of a command that runs a server (``serve``: from ``ServerConfig``); ``--host`` deprecated."""
    p.add_argument("--listen", default=LOOPBACK, metavar="ADDR", help=f"{what} (default {LOOPBACK}: loopback only)")
    add_deprecated_alias(p, "--host", new="--listen", dest="listen")


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6), or a bare ``PORT`` on loopback."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = LOOPBACK, text
    host = host.strip("[]") or LOOPBACK
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65_536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:7480, or 7480 on loopback)")
    return host, number


def add_target(
    p: argparse.ArgumentParser,
    *,
    what: str = "the running server to load",
    unset: str = "none, required",
    old_aliases: bool = True,
) -> None:
    """``--target HOST:PORT``: a server this command connects to (``target_of``).

    ``old_aliases``: keep ``load``'s former ``--host``/``--port`` as deprecated aliases. A command
    that also starts its own server (``run``, where ``--host`` is the old ``--listen``) passes False
    and says what leaving ``--target`` out means in ``unset``.
    """
    p.add_argument(
        "--target",
        type=parse_target,
        default=None,
        metavar="HOST:PORT",
        help=f"{what}, as printed by 'cbdc-bench serve' (default: {unset})",
    )
    if old_aliases:
        add_deprecated_alias(p, "--host", new="--target HOST:PORT", dest="old_host")
        add_deprecated_alias(p, "--port", new="--target HOST:PORT", dest="old_port", type=int)


def target_of(args: argparse.Namespace) -> tuple[str, int]:
    """The (host, port) of ``--target``, or of the deprecated ``--host``/``--port``."""
    if args.target is not None:
        return tuple(args.target)
    port = getattr(args, "old_port", None)
    if port is None:
        raise ValueError("say which server to load: --target HOST:PORT (the address 'cbdc-bench serve' printed)")
    return getattr(args, "old_host", None) or LOOPBACK, int(port)


def add_journal(p: argparse.ArgumentParser) -> None:
    """``--journal DIR``, ``--fsync``, ``--keep-journal`` of a command that starts its own server."""
    p.add_argument(
        "--journal",
        default=None,
        metavar="DIR",
        help="journal every batch to a fresh file in DIR (default: no journal)",
    )
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


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """The options of one open-loop load (``LoadConfig``), shared by ``load`` and ``run``, with the same defaults."""
    p.add_argument(
        "--rate",
        type=parse_rate,
        default=DEFAULT_RATE_TPS,
        metavar="R",
        help=f"offered payments/s, all gateways, e.g. 300000, 300k, 1.2M (default {DEFAULT_RATE_TPS:,.0f})",
    )
    add_seconds(p, default=DEFAULT_SECONDS)
    add_warmup(p, default=DEFAULT_WARMUP)
    p.add_argument(
        "--operators", type=parse_count, default=2, help="operator gateways, one connection each (default 2)"
    )
    p.add_argument(
        "--processes", type=parse_count, default=1, help="generator processes sharing the gateways (default 1)"
    )
    p.add_argument(
        "--arrival", choices=[a.value for a in Arrival], default="constant", help="arrival process (default constant)"
    )
    p.add_argument(
        "--tick-us",
        type=parse_count,
        default=0,
        help="send tick in us (default 0 = auto: ~1,000/frame, 1-5 ms; signed loads 1-3 ms)",
    )
    add_max_batch(p, what="Submit frame", old="--batch-max")
    add_drain(p, default=5.0)
    p.add_argument(
        "--trove-flushes",
        type=parse_count,
        default=0,
        metavar="N",
        help="after the drain, wait (60 s at most) until the server's trove has written N memtables whole, so the "
        "result prices its rows at a finished flush's CPU (the capacity plan's runs use 2) (default 0: only a flush "
        "running then is waited for)",
    )
    add_seed(p)
    p.add_argument(
        "--secrets",
        default="",
        metavar="FILE",
        help="secrets for a server with authentication on (TOML file, or 'env') (default: none)",
    )
    add_json(p)
    add_out(p, default=DEFAULT_RESULTS_DIR, what="directory for the result file (ignored by git)")


def load_config(args: argparse.Namespace, *, host: str, port: int) -> LoadConfig:
    """The ``LoadConfig`` of ``add_load_arguments``' options and ``--scenario``'s workload; a bad
    value is a ``ValueError``."""
    workload = ScenarioWorkload.of(load_scenario(args.scenario))
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
            batch_max=args.max_batch,
            drain=args.drain,
            seed=args.seed,
            secrets=args.secrets,
            workload=workload,
            trove_flushes=args.trove_flushes,
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
        "(which is always searched); repeatable; passed on to the server a command starts (default: none)",
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
        type=parse_count,
        default=1,
        metavar="N",
        help="run N times, each against a fresh server, writing the results to one directory under --out "
        "(compare two such directories with 'cbdc-bench diff'; default 1)",
    )


def add_ramp(p: argparse.ArgumentParser) -> None:
    """``--ramp FROM:TO:DURATION[,...]`` of ``run`` and ``load``: a staged offered rate (``with_ramp``)."""
    p.add_argument(
        "--ramp",
        default="",
        metavar="STAGES",
        help="offered rate along stages from the start, warm-up included: FROM:TO:DURATION, comma-separated "
        "(e.g. 0:300k:60s is a linear ramp to 300k/s over a minute); after the last stage the rate holds at its "
        "end; the result records the peak as the offered rate, --rate is not used (default: none, --rate "
        "throughout)",
    )


def with_ramp(config: LoadConfig, ramp: str) -> LoadConfig:
    """``config`` with ``--ramp`` (its offered rate the ramp's peak); unchanged without one."""
    if not ramp:
        return config
    return msgspec.structs.replace(config, ramp=ramp, rate_tps=ramp_peak_tps(parse_ramp(ramp)))


def add_resume(p: argparse.ArgumentParser) -> None:
    """``compare --resume DIR``: go on with an interrupted comparison from its completed phases."""
    p.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="go on with the interrupted comparison in DIR: its own arguments apply (DIR/compare.plan), "
        "completed phases are read back from their result files, the rest is measured (default: a new comparison)",
    )


def add_reuse_server(p: argparse.ArgumentParser) -> None:
    """``compare --reuse-server``: allow ``--target`` (trials on one running server; the report says so)."""
    p.add_argument(
        "--reuse-server",
        action="store_true",
        help="with --target: run every trial against that one server (not a fresh one each), its profile only; "
        "the summary and report note that trials were not independent",
    )


def add_validators(p: argparse.ArgumentParser, *, starts_server: bool = True) -> None:
    """``--validators SPEC``: the signature tier of signed profiles (``serve --validators``).

    A command that starts its servers (``run``, ``compare``) passes it on to them; ``load`` checks
    that the running server uses that tier and refuses to measure another one.
    """
    spec = "N local validator processes (0 = on the sequencer's thread), ray:auto or ray:ADDRESS"
    p.add_argument(
        "--validators",
        metavar="SPEC",
        default=None,
        help=f"the server's signature verification: {spec} (signed profiles) (default: the server's, 0)"
        if starts_server
        else f"the signature verification the running server must use, checked before the load: {spec} "
        "(default: not checked)",
    )


def validators_arguments(spec: str | None) -> tuple[str, ...]:
    """The ``serve`` arguments for ``--validators SPEC`` (none when unset); a bad SPEC is a ValueError now."""
    if spec is None:
        return ()
    parse_validators(spec)
    return ("--validators", spec)


def add_model_training(p: argparse.ArgumentParser, *, trees: int, payments: int, accounts: int) -> None:
    """Size of a risk model's training run (``cbdc-bench model``)."""
    p.add_argument("--trees", type=parse_count, default=trees, metavar="N", help="boosting rounds, 31 leaves each")
    p.add_argument("--payments", type=parse_count, default=payments, metavar="N", help="payments simulated, e.g. 600k")
    add_accounts(p, default=accounts)


_BYTE_SUFFIXES = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20,
                  "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_bytes(text: str) -> float:
    """A size: ``512GiB``, ``2TB``, ``1.5e12`` (bytes)."""
    match = re.fullmatch(r"\s*([0-9.eE+_]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _BYTE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512GiB, 2TB, 1e12)")
    try:
        return float(match.group(1).replace("_", "")) * _BYTE_SUFFIXES[unit]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512GiB, 2TB, 1e12)") from exc


def parse_machine(text: str) -> dict[str, float]:
    """``cores=64,memory=512GiB[,disk=30TB]``: the machine a capacity plan counts in."""
    out: dict[str, float] = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("cores", "memory", "disk"):
            raise argparse.ArgumentTypeError(f"{part!r}: say cores=N, memory=SIZE and optionally disk=SIZE")
        out[key] = parse_count(value) if key == "cores" else parse_bytes(value)
    if "cores" not in out or "memory" not in out:
        raise argparse.ArgumentTypeError(f"{text!r}: say at least cores=N,memory=SIZE (e.g. cores=64,memory=512GiB)")
    return out


def add_plan_options(p: argparse.ArgumentParser) -> None:
    """The options of ``cbdc-bench plan`` that no other command has."""
    p.add_argument(
        "--results", default=DEFAULT_RESULTS_DIR, metavar="DIR",
        help="directory of result files to plan from (read recursively: run, compare, engine results)",
    )  # fmt: skip
    p.add_argument(
        "--machine", type=parse_machine, default=parse_machine("cores=64,memory=512GiB"), metavar="SPEC",
        help="the machine to count in: cores=N,memory=SIZE[,disk=SIZE] (default cores=64,memory=512GiB)",
    )  # fmt: skip
    p.add_argument(
        "--retention", type=parse_seconds, default=365 * 86_400.0, metavar="T",
        help="how long the journal and trove are kept, e.g. 365d, 90d (default 365d)",
    )  # fmt: skip
    p.add_argument(
        "--replicas", type=parse_count, default=3, metavar="N",
        help="copies of the sequencer, its state, journal and snapshots (default 3)",
    )  # fmt: skip
    p.add_argument(
        "--snapshots-kept", type=parse_count, default=2, metavar="N", help="snapshots kept per replica (default 2)"
    )
    p.add_argument(
        "--scale-by-calibration", action="store_true",
        help="accept result files from different CPUs, scaling each one's costs by its CPU calibration score",
    )  # fmt: skip


def account_counts(text: str) -> tuple[int, ...]:
    """``1e4,1e6,1.4e9`` (or ``10k,1M,1400M``) -> account counts, each a whole number >= 2.

    Commas separate sizes here, so a size cannot use thousands separators.
    """
    counts = tuple(parse_count(part) for part in text.split(",") if part.strip())
    if not counts or min(counts) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: need account counts >= 2, e.g. 1e4,1e6,1.4e9")
    return counts


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
