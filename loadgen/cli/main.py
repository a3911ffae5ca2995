"""The ``cbdc-bench`` command line: one module per subcommand, registered here.

Each subcommand module exposes ``add_parser(subparsers)`` that registers its arguments and sets
``func`` to a plain function taking the parsed namespace and returning an exit code; tests call
the typed functions behind them directly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from engine.journal import JournalDamaged, JournalLocked, JournalMismatch
from loadgen.cli.common_args import HelpFormatter, add_version, use_hooks_path

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = (
    "loadgen.cli.run",
    "loadgen.cli.compare",
    "loadgen.cli.report",
    "loadgen.cli.diff",
    "loadgen.cli.csv_export",
    "loadgen.cli.load",
    "loadgen.cli.serve",
    "loadgen.cli.engine",
    "loadgen.cli.scale",
    "loadgen.cli.verify_chain",
    "loadgen.cli.trove",
    "loadgen.cli.model",
    "loadgen.cli.plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbdc-bench",
        description="Can an account-based CBDC settle 300,000 payments/s, and what do policy hooks cost?",
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    _format_all(parser)
    return parser


def _format_all(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's help through ``HelpFormatter``: defaults shown, no reST markup."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _format_all(child)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        use_hooks_path(getattr(args, "hooks_path", ()))  # the working directory, for every command
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, JournalMismatch, JournalDamaged, JournalLocked, MemoryError) as exc:
        print(f"cbdc-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
