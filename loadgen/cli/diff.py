"""``cbdc-bench diff A B``: how B differs from A in throughput and latency, and whether it is significant.

A and B are result files, or directories of repeats (``run --repeats N`` writes one). The
change of each figure (achieved and goodput rates, p50 to max latency) is the change of its mean
over the runs; whether it is significant is Welch's t-test on the per-run values, as pyperf
compares benchmarks (never on the raw latencies of a run, which are autocorrelated). A side with
a single run is compared but never judged significant. See ``loadgen.results.diff``.
"""

from __future__ import annotations

import argparse
import json

import msgspec

from loadgen.cli.common_args import add_alpha, add_json
from loadgen.results.diff import DEFAULT_ALPHA, diff_paths, format_diff


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff", help="A/B: change in throughput and latency between two sets of runs", description=__doc__
    )
    p.add_argument("a", metavar="A", help="baseline: a result file or a directory of repeats")
    p.add_argument("b", metavar="B", help="candidate: a result file or a directory of repeats")
    add_alpha(p, default=DEFAULT_ALPHA)
    add_json(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    result = diff_paths(args.a, args.b, alpha=args.alpha)
    print(json.dumps(msgspec.to_builtins(result)) if args.json else format_diff(result))
    return 0
