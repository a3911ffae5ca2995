"""``cbdc-bench trove``: query, inspect and benchmark a persistent surveillance trove.

``trove query DIR`` runs one of the surveillance queries (``engine.trove.query``) and prints a
table or, with ``--json``, one JSON object (times as ISO 8601, China Standard Time, beside the
raw ns). ``trove stats DIR`` prints rows, bytes on disk, segments, compacted rows (``--verify``
also checks every file's digest). ``trove bench`` bulk-loads a seeded trove through the writer
(no server) and reports ingest rows/s, bytes per row and query latency p50/p99 per kind.
Damaged or foreign files are named on stderr (and under ``problems`` in JSON), never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import msgspec

from engine.options import parse_count
from engine.simtime import iso_cst, parse_time
from engine.trove.bench import QUERY_KINDS
from engine.trove.config import TroveConfig
from engine.trove.query import DIMENSIONS, TroveReader
from engine.trove.store import manifest_stats
from loadgen.cli.common_args import add_json, add_seconds, add_seed

#: Columns holding unix ns that the output also shows as ISO 8601 CST.
_TIME_COLUMNS = {"timestamp_ns": "time", "bucket_ns": "bucket", "first_ns": "first", "last_ns": "last"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trove", help="query, inspect or benchmark a surveillance trove", description=__doc__)
    tsub = p.add_subparsers(dest="trove_command", required=True, metavar="ACTION")

    q = tsub.add_parser("query", help="run a surveillance query against a trove directory")
    q.add_argument("dir", help="trove directory")
    kind = q.add_mutually_exclusive_group(required=True)
    kind.add_argument("--account", type=int, help="payments sent and received by this account")
    kind.add_argument("--counterparties", type=int, metavar="N", help="ranked counterparties of account N")
    kind.add_argument("--cell", type=int, help="accounts that paid in this location cell")
    kind.add_argument("--same-device", type=int, metavar="N", help="accounts that paid from a device N used")
    kind.add_argument("--aggregate", metavar="DIMS", help=f"comma-separated dimensions: {','.join(DIMENSIONS)}")
    q.add_argument(
        "--since",
        type=parse_time,
        help="ISO 8601 (China Standard Time unless an offset is given) (default: from the first payment)",
    )
    q.add_argument("--until", type=parse_time, help="end of the window, exclusive (default: after the last payment)")
    q.add_argument("--hops", type=int, default=1, choices=(1, 2), help="counterparty hops")
    q.add_argument("--top", type=int, default=50, help="most counterparties listed")
    q.add_argument("--by", default="hour", choices=("hour", "day"), help="time bucket of --aggregate")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=_query)

    s = tsub.add_parser("stats", help="rows, bytes on disk, segments and compacted rows of a trove")
    s.add_argument("dir", help="trove directory")
    s.add_argument("--verify", action="store_true", help="also check every file's BLAKE2b digest")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_stats)

    b = tsub.add_parser("bench", help="bulk-load a seeded trove (no server) and time each query kind")
    b.add_argument(
        "--rows",
        type=parse_count,
        default=1_000_000,
        help="rows to load, e.g. 1e6 or 1000M (default 1e6; 1e9 for the headline)",
    )
    b.add_argument("--accounts", type=parse_count, default=1_000_000, help="accounts the rows are spread over")
    b.add_argument("--seed", type=int, default=20_261_203, help="seed of the rows")
    b.add_argument("--queries", type=int, default=50, help="subjects timed per query kind")
    b.add_argument("--dir", default="", help="keep the trove here (default: a temporary directory, deleted)")
    b.add_argument(
        "--in-process",
        action="store_true",
        help="write with threads of this process instead of the child process the server uses (comparison)",
    )
    b.add_argument(
        "--direct",
        action="store_true",
        help="bulk path: write the runs the writer and compactor would leave straight to disk (engine.trove.bulk; "
        "10^9 rows in minutes, no ingest or compaction figures), then time the queries",
    )
    _add_build_args(b)
    b.add_argument(
        "--kinds",
        default=",".join(QUERY_KINDS),
        help="query kinds to time, comma-separated (default all five; add counterparties_2hop_sql, "
        "co_location_hour_sql, same_device_sql for the DuckDB forms on the same subjects)",
    )
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=_bench)

    bd = tsub.add_parser(
        "build",
        help="write a seeded trove straight into its compacted layout (bulk path, no writer or merges)",
        description="Write a seeded trove (the rows of trove bench, same seed) straight into the runs the "
        "writer and the compaction policy would leave: the policy is replayed on metadata, the rows are "
        "sorted per ordering and written with the trove's schema, codecs and row groups, and the manifest is "
        "committed last. It skips the writer's files and every intermediate merge (trove bench measures "
        "those), so it gives query figures, not ingest ones (see engine/trove/bulk.py).",
    )
    bd.add_argument("dir", help="a new or empty directory for the trove")
    bd.add_argument("--rows", type=parse_count, default=1_000_000, help="rows, e.g. 1e9")
    bd.add_argument("--accounts", type=parse_count, default=1_000_000, help="accounts the rows are spread over")
    bd.add_argument("--seed", type=int, default=20_261_203, help="seed of the rows (as trove bench)")
    _add_build_args(bd)
    bd.add_argument("--json", action="store_true", help="print one JSON object")
    bd.set_defaults(func=_build)

    sc = tsub.add_parser(
        "sidecars",
        help="build the runs' sidecars that --cell and --same-device look up (else built on first use)",
    )
    sc.add_argument("dir", help="trove directory")
    sc.add_argument(
        "--threads",
        type=int,
        default=1,
        help="sidecars built side by side (default 1)",
    )
    add_json(sc)
    sc.set_defaults(func=_sidecars)

    pr = tsub.add_parser("probe", help="time each query kind against a trove a server is writing")
    pr.add_argument("dir", help="trove directory (a run's --trove)")
    add_seconds(pr, default=20.0, what="seconds of querying")
    pr.add_argument("--accounts", type=parse_count, default=1_000_000, help="subjects are drawn from 0..accounts-1")
    add_seed(pr, what="subjects")
    add_json(pr)
    pr.set_defaults(func=_probe)


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--segment-rows",
        type=parse_count,
        default=TroveConfig().segment_rows,
        help="the writer's flush size the direct build assumes (a live writer flushes every second: "
        "rows/s of ingest); it decides the runs the compaction policy leaves (default %(default)s)",
    )
    p.add_argument(
        "--row-group-rows",
        type=parse_count,
        default=TroveConfig().row_group_rows,
        help="rows per Parquet row group (default %(default)s)",
    )
    p.add_argument(
        "--final-row-group-rows",
        type=parse_count,
        default=TroveConfig().final_row_group_rows,
        help="rows per row group of final runs, the ones lookups read (0: --row-group-rows; must divide it) "
        "(default %(default)s)",
    )
    p.add_argument(
        "--max-run-rows",
        type=parse_count,
        default=TroveConfig().max_run_rows,
        help="runs reaching this many rows are never merged again: fewer, larger runs mean fewer files "
        "per lookup, for one more merge per row (default %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=1, choices=(1, 2), help="direct build: write the two orderings side by side"
    )


def _build_config(args: argparse.Namespace) -> TroveConfig:
    return TroveConfig(
        segment_rows=int(args.segment_rows),
        row_group_rows=int(args.row_group_rows),
        final_row_group_rows=int(args.final_row_group_rows),
        max_run_rows=int(args.max_run_rows),
    )


def _print_build(b: Any) -> None:
    print(
        f"{b.rows:,} rows into {b.runs} runs in {b.partitions} partitions at {b.dir}: {b.build_s:.0f} s "
        f"(CPU {b.build_cpu_s:.0f} s), {b.bytes_per_row:.1f} bytes/row on disk (both orderings), "
        f"peak RSS {b.peak_rss_bytes / 2**30:.2f} GiB; skipped {b.merges_skipped} merges rewriting "
        f"{b.rows_merged_skipped:,} rows"
    )


def _build(args: argparse.Namespace) -> int:
    from engine.trove.bulk import build

    result = build(
        args.dir,
        rows=int(args.rows),
        accounts=int(args.accounts),
        seed=args.seed,
        config=_build_config(args),
        threads=args.threads,
    )
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        _print_build(result)
    return 0


def query(args: argparse.Namespace) -> dict[str, Any]:
    """Run the query the arguments name; the JSON-able result."""
    reader = TroveReader.open(args.dir)
    window = {"since": args.since, "until": args.until}
    try:
        if args.account is not None:
            kind, table = "payments", reader.payments(args.account, **window)
        elif args.counterparties is not None:
            kind = "counterparties"
            table = reader.counterparties(args.counterparties, hops=args.hops, top=args.top, **window)
        elif args.cell is not None:
            kind, table = "co_location", reader.co_location(args.cell, **window)
        elif args.same_device is not None:
            kind, table = "same_device", reader.same_device(args.same_device, **window)
        else:
            dims = [d.strip() for d in args.aggregate.split(",") if d.strip()]
            kind, table = "aggregate", reader.aggregate(dims, args.by, **window)
        rows = table.to_pylist()
    finally:
        reader.close()
    for row in rows:
        for col, label in _TIME_COLUMNS.items():
            if col in row:
                row[label] = iso_cst(row[col])
    return {"query": kind, "rows": rows, "count": len(rows), "problems": reader.problems}


def _query(args: argparse.Namespace) -> int:
    out = query(args)
    for problem in out["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
        return 0
    rows = out["rows"]
    if rows:
        cols = list(rows[0])
        print("  ".join(cols))
        for row in rows:
            print("  ".join(str(row[c]) for c in cols))
    print(f"{out['count']} rows ({out['query']})")
    return 0


def stats(directory: str, *, verify: bool = False) -> dict[str, Any]:
    """Figures of the trove at ``directory`` from its manifest; damaged files listed under ``problems``."""
    reader = TroveReader.open(directory, deep_check=verify)
    reader.close()
    from engine.trove.manifest import load_manifest

    manifest = load_manifest(reader.root) if reader.root is not None else None
    assert manifest is not None and reader.root is not None
    # bytes_on_disk counts the derived files too (sidecar_bytes, rollup_bytes), as retention's max_bytes does.
    return manifest_stats(manifest, manifest.segments, reader.root) | {"problems": reader.problems}


def _stats(args: argparse.Namespace) -> int:
    out = stats(args.dir, verify=args.verify)
    for problem in out["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            if key != "problems":
                print(f"{key:>20}  {value}")
    return 1 if out["problems"] else 0


def _bench(args: argparse.Namespace) -> int:
    from engine.trove.bench import run_bench

    if args.direct:
        return _bench_direct(args)
    result = run_bench(
        rows=args.rows,
        accounts=args.accounts,
        seed=args.seed,
        queries=args.queries,
        directory=args.dir,
        config=msgspec.structs.replace(_build_config(args), process=not args.in_process),
        kinds=tuple(k for k in args.kinds.split(",") if k),
    )
    if args.json:
        print(msgspec.json.encode(result).decode())
        return 0
    print(
        f"{result.rows:,} rows into {result.runs} runs: ingest {result.ingest_rows_per_s:,.0f} rows/s "
        f"(writer CPU {result.writer_cpu_s:.1f} s), compaction {result.compaction_s:.1f} s "
        f"(CPU {result.compaction_cpu_s:.1f} s), {result.bytes_per_row:.1f} bytes/row on disk "
        f"(both orderings), {result.gb_per_day_at_300k_tps:,.0f} GB/day at 300,000 payments/s"
    )
    print(f"  trove CPU per row with compaction keeping up (due merges done): {result.steady_cpu_ns_per_row:,.0f} ns")
    if not args.in_process:
        print(
            f"  trove process: CPU {result.process_cpu_s:.1f} s ({result.process_cpu_s / result.rows * 1e9:,.0f} "
            f"ns/row, final merge included), {result.process_runqueue_wait_s:.1f} s runnable but waiting for a CPU"
        )
    _print_latencies(result.queries)
    return 0


def _bench_direct(args: argparse.Namespace) -> int:
    from engine.trove.bulk import bench_direct

    if args.in_process:
        raise SystemExit("trove bench: --direct writes no segments through a writer; --in-process does not apply")
    out = bench_direct(
        rows=int(args.rows),
        accounts=int(args.accounts),
        seed=args.seed,
        queries=args.queries,
        directory=args.dir,
        config=_build_config(args),
        threads=args.threads,
        kinds=tuple(k for k in args.kinds.split(",") if k),
    )
    if args.json:
        print(msgspec.json.encode(out).decode())
        return 0
    _print_build(out.build)
    _print_latencies(out.queries)
    return 0


def _sidecars(args: argparse.Namespace) -> int:
    reader = TroveReader.open(args.dir)
    try:
        out = reader.build_sidecars(threads=args.threads)
    finally:
        reader.close()
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['built']:.0f} sidecars built in {out['seconds']:.1f} s; all sidecars {out['bytes'] / 1e9:.2f} GB, "
            f"{out['bytes_per_row']:.1f} bytes per row of the runs"
        )
    return 0


def _probe(args: argparse.Namespace) -> int:
    from engine.trove.bench import probe_live

    out = probe_live(args.dir, seconds=args.seconds, accounts=int(args.accounts), seed=args.seed)
    if args.json:
        print(json.dumps(out))
    else:
        _print_latencies(out)
    return 0 if out else 1


def _print_latencies(queries: dict[str, dict[str, float]]) -> None:
    for kind, t in queries.items():
        failed = f", {t['failed']:.0f} failed" if t.get("failed") else ""
        print(
            f"  {kind:>22}  p50 {t['p50_ms']:8.2f} ms  p99 {t['p99_ms']:8.2f} ms  "
            f"({t['mean_rows']:.1f} rows, {t['queries']:.0f} queries{failed})"
        )
