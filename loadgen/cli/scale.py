"""``cbdc-bench scale``: engine throughput and end-to-end capacity against the number of accounts.

Builds each size's population once and resets the accounts a trial touched between trials
(``loadgen.harness.scale``); writes ``OUT/scale.json`` and ``OUT/scale.png`` (log x axis). At
1.4e9 accounts a size needs ~16 GB and minutes to build: ``--sizes`` and ``--e2e-sizes`` choose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadgen.cli.common_args import add_out, add_scale_options, add_seconds, add_seed, add_warmup
from loadgen.harness.scale import DEFAULT_SIZES, ScaleResult, ScaleSettings, run_scale


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="throughput against the number of accounts", description=__doc__)
    add_scale_options(p, sizes=DEFAULT_SIZES)
    add_seconds(p, default=3.0, what="measured seconds per engine trial")
    add_warmup(p, default=1.0)
    add_seed(p, what="population and workload")
    add_out(p, default="results/scale", when_unset="results/scale")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    settings = ScaleSettings(
        sizes=args.sizes,
        profiles=args.profiles,
        trials=args.trials,
        seconds=args.seconds,
        warmup=args.warmup,
        seed=args.seed,
        e2e_sizes=args.e2e_sizes,
        hugepages=not args.no_hugepages,
    )
    result = run_scale(settings, Path(args.out), log=lambda line: print(line, file=sys.stderr), append=args.append)
    print(format_summary(result))
    print(f"wrote {Path(args.out) / 'scale.json'} and scale.png")
    return 0 if all(t.audit_ok for t in result.engine) else 1


def format_summary(r: ScaleResult) -> str:
    lines = []
    for b in r.builds:
        rss = f", peak RSS {b.peak_rss_bytes / 2**30:.2f} GiB" if b.peak_rss_bytes else ""
        lines.append(f"{b.accounts:,} accounts: population built in {b.population_build_seconds:.1f} s{rss}")
        for profile in r.settings.profiles:
            tps = sorted(t.transfers_per_s for t in r.engine if t.accounts == b.accounts and t.profile == profile)
            if tps:
                lines.append(f"  {profile}: engine {tps[len(tps) // 2]:,.0f}/s (median; {tps[0]:,.0f}-{tps[-1]:,.0f})")
            lines += [
                f"  {profile}: end to end {e.max_sustainable_tps:,.0f}/s max sustainable ({e.note})"
                for e in r.e2e
                if e.accounts == b.accounts and e.profile == profile
            ]
    return "\n".join(lines)
