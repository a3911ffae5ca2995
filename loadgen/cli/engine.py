"""``cbdc-bench engine``: the in-process benchmark of the ledger and its hooks (no network).

Batches are generated up front (outside the timed region) and replayed by a ``BatchPool``; only
``Ledger.apply`` and the deferred observers are timed. The first ``warmup`` seconds are run and
discarded, so caches, allocator and branch predictors are warm when measuring starts.
"""

from __future__ import annotations

import argparse
import json
import sys

import msgspec

from loadgen.cli.common_args import (
    add_accounts,
    add_hooks_path,
    add_json,
    add_max_batch,
    add_out,
    add_profile,
    add_scenario,
    add_seconds,
    add_seed,
    add_warmup,
)
from loadgen.harness.engine_run import EngineResult, run_engine, save_engine_result
from loadgen.model.train import ensure_profile_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine", help="in-process ledger benchmark (no network)", description=__doc__)
    add_accounts(p, default=1_000_000)
    add_profile(p)
    add_scenario(p)
    add_hooks_path(p)
    add_max_batch(p, what="engine batch (every batch is this full)", old="--batch")
    add_seconds(p, default=5.0, what="measured seconds of ledger time")
    add_warmup(p, default=1.0)
    add_seed(p, what="workload")
    add_json(p)
    add_out(
        p,
        default=None,
        when_unset="none: not saved",
        what="also save the run as a result file of kind engine in DIR (read by 'cbdc-bench plan')",
    )
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    ensure_profile_model(args.profile, args.scenario)
    result = run_engine(
        accounts=args.accounts,
        profile=args.profile,
        batch=args.max_batch,
        seconds=args.seconds,
        warmup=args.warmup,
        seed=args.seed,
        scenario=args.scenario,
    )
    if args.json:
        print(json.dumps(msgspec.to_builtins(result)))
    else:
        print(format_summary(result))
    if args.out is not None:
        print(f"result: {save_engine_result(result, args.out)}", file=sys.stderr if args.json else sys.stdout)
    return 0 if result.audit_ok else 1


def format_summary(r: EngineResult) -> str:
    lines = [
        f"profile {r.profile}: {r.transfers_per_s:,.0f} transfers/s "
        f"({r.transfers:,} transfers in {r.seconds:.2f} s of ledger time, batches of {r.batch:,})",
        f"accounts {r.accounts:,}; state {r.bytes_per_account:.1f} bytes/account "
        f"(ledger {r.ledger_bytes_per_account:.1f}, hooks {r.bytes_per_account - r.ledger_bytes_per_account:.1f})",
        f"exact one-at-a-time path: {r.exact_path_share:.2%} of transfers; audit {'ok' if r.audit_ok else 'FAILED'}",
        f"built in {r.build_seconds or 0:.1f} s (population v{r.population_version}); peak RSS "
        f"{(r.build_peak_rss_bytes or 0) / 2**30:.2f} GiB after the build, "
        f"{(r.peak_rss_bytes or 0) / 2**30:.2f} GiB at the end",
        "results: " + ", ".join(f"{k} {v:,}" for k, v in sorted(r.codes.items(), key=lambda kv: -kv[1])),
    ]
    if r.hooks:
        lines.append("hook cost (ns/transfer): " + ", ".join(f"{k} {v:,.0f}" for k, v in r.hooks.items()))
    return "\n".join(lines)
