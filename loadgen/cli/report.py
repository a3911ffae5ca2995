"""``cbdc-bench report``: tables and plots from result files alone (nothing is re-run).

Give result files, directories of them, or a ``compare`` output directory (its ``compare.json``
says which run is which). Writes ``report.md`` (the tables), ``report.json`` (the numbers the
tables are built from) and ``elbow.png``, ``cost.png``, ``spectrum.png``, ``timeseries.png``.
Result files in a format version this cbdc-bench does not read are refused, naming the version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loadgen.cli.common_args import add_out
from loadgen.report.writer import write_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Markdown tables and PNG plots from result files", description=__doc__)
    p.add_argument("results", nargs="+", help="result files and/or directories (e.g. a compare output directory)")
    add_out(p, default=None, when_unset="the one directory given, else ./report")
    p.set_defaults(func=_main)


def default_out(results: list[str]) -> Path:
    if len(results) == 1 and Path(results[0]).is_dir():
        return Path(results[0])
    return Path("report")


def _main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out(args.results)
    for path in write_report(args.results, out):
        print(path)
    return 0
