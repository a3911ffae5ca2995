"""``cbdc-bench csv RESULT...``: a result file's summary, per-second series and per-minute latency as CSV.

Writes ``NAME-summary.csv`` (one row), ``NAME-series.csv`` (one row per second, warm-up and
drain included, with the phase) and ``NAME-minutes.csv`` (latency of each measured minute, from
the merged per-second histograms: the drift of a long run) next to each result file, or in
``--out DIR``. See ``loadgen.results.export``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loadgen.cli.common_args import add_out
from loadgen.results.export import write_csv
from loadgen.results.run import load


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("csv", help="a result file's summary and per-second series as CSV", description=__doc__)
    p.add_argument("results", nargs="+", metavar="RESULT", help="result files (results/*.json)")
    add_out(p, default=None, when_unset="beside each result file")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    for name in args.results:
        path = Path(name)
        for written in write_csv(load(path), args.out or path.parent, path.stem):
            print(written)
    return 0
