"""``cbdc-bench report``: tables and plots from result files alone (nothing is re-run).

Give result files, directories of them, or a ``compare`` output directory (its ``compare.json``
says which run is which). Writes ``report.md`` (the tables), ``report.json`` (the numbers the
tables are built from) and ``elbow.png``, ``cost.png``, ``spectrum.png``, ``timeseries.png``,
with paths relative to the report's directory (so a committed report is valid in any checkout).

Where: a new directory every time (``report-STAMP`` inside the one directory given, or in the
working directory), never over an earlier report, unless ``--overwrite``: then into the one
directory given itself (a compare directory's own report) or into ``--out`` even if it holds a
report. Result files of a format version this cbdc-bench does not read are refused, naming the
version; older versions are upgraded on reading (the files are not rewritten).

Inputs that cannot be compared are refused: runs from different CPUs, account counts or
scenarios, unless ``--split-by`` names what differs (``cpu``, ``accounts``, ``scenario``; one
report per group, in subdirectories).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from loadgen.cli.common_args import add_out
from loadgen.report.writer import write_report

#: Files that say a directory already holds a report.
_REPORT_FILES = ("report.md", "report.json")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Markdown tables and PNG plots from result files", description=__doc__)
    p.add_argument("results", nargs="+", help="result files and/or directories (e.g. a compare output directory)")
    add_out(p, default=None, when_unset="a new report-STAMP directory in the one directory given, else in .")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write over an existing report: into --out, or into the one directory given",
    )
    p.add_argument(
        "--split-by",
        action="append",
        default=[],
        choices=("cpu", "accounts", "scenario"),
        help="one report per CPU, account count or scenario (in subdirectories) instead of refusing a mix; "
        "repeatable (default: a mix is refused)",
    )
    p.set_defaults(func=_main)


def output_directory(results: list[str], out: str | None, *, overwrite: bool, stamp: str | None = None) -> Path:
    """Where the report goes (see the module docstring); ValueError if that would overwrite a report."""
    single_dir = len(results) == 1 and Path(results[0]).is_dir()
    if out is not None:
        folder = Path(out)
        if not overwrite and any((folder / name).exists() for name in _REPORT_FILES):
            raise ValueError(f"{folder} already holds a report; choose another --out or pass --overwrite")
        return folder
    if overwrite and single_dir:
        return Path(results[0])
    base = Path(results[0]) if single_dir else Path(".")
    name = f"report-{stamp or time.strftime('%Y%m%dT%H%M%S')}"
    folder, n = base / name, 1
    while folder.exists():
        n += 1
        folder = base / f"{name}-{n}"
    return folder


def _main(args: argparse.Namespace) -> int:
    out = output_directory(args.results, args.out, overwrite=args.overwrite)
    for path in write_report(args.results, out, split_by=args.split_by):
        print(path)
    return 0
