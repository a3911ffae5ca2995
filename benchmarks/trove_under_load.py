"""Query latency under load: the trove queried while a server writes at a given rate (issue 17).

Starts ``cbdc-bench run --profile full --rate R --trove T`` (its own server and open-loop
generator) and, once the server's first segment is committed, times every query kind from this
process for ``--probe-seconds`` (``engine.trove.bench.probe_live``, one reader kept open as a
service would) over the last simulated day of the trove's history. Prints one JSON object:
p50/p99 per query kind, the run's verdict line and exit status (0 sustained, 3 not sustained,
4 generator behind, 5 incomplete), its trove figures, and the queried trove's rows before and after.

Two ways to give the trove a history:

* ``--preload-rows N``: bulk-load N seeded rows into a fresh trove (compacted), dated *before*
  the run's simulated clock starts (the days just before 2026-11-22 08:00 CST), so the run's
  payments go on from where the history ends, as they would in a trove that has been running:
  the server writes into that trove (``T`` = the preloaded one), deleted afterwards.
* ``--trove-dir DIR``: an existing, already loaded trove (e.g. a 10^9-row ``trove bench --dir``),
  neither loaded nor deleted. By default the server writes its own fresh trove on the same
  filesystem (next to DIR), so DIR is left as it was and the queries run on the same disk while
  the server writes and compacts at the rate; ``--into-trove-dir`` makes the server write into
  DIR itself (its payments join the partitions of their simulated days: with a ``trove bench``
  trove that is the bench's first day, which then gets merges of its own).

Each round asks every kind still to be timed about the same subject; ``--max-queries`` bounds the
timed queries per kind (a kind that has them drops out of the rounds, and the probe ends when every
kind is done), so a slow kind (the aggregates; the ``*_sql`` forms, DuckDB as before the lookups)
cannot take the whole window. With a sidecar kind (``co_location_hour``, ``same_device``) the
queried trove's missing sidecars are built before the server starts, timed (``sidecars``).
``run_outlasted_probe`` false means some queries ran after the load had stopped: give more
``--seconds``.

Quiet-machine commands (each ~3-5 min):

    python -m benchmarks.trove_under_load --rate 300000 --seconds 60 --preload-rows 1e7
    python -m benchmarks.trove_under_load --rate 300000 --seconds 60 --trove-dir /work/t1e9/trove
    # every kind at 10^9 rows, bounded (build the sidecars first: cbdc-bench trove sidecars DIR --threads 2)
    python -m benchmarks.trove_under_load --rate 300000 --seconds 120 --trove-dir /work/t1e9/trove \
        --kinds payments_day,counterparties_2hop,co_location_hour,same_device,aggregate_hour \
        --max-queries 300,aggregate_hour=15

Small check (~1 min): ``--rate 20000 --seconds 8 --accounts 100000 --preload-rows 2e5``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.clock import CLOCK_START_NS
from engine.options import parse_count
from engine.simtime import NS_PER_DAY, iso_cst
from engine.trove.bench import QUERY_KINDS, SIDECAR_KINDS, bulk_load, probe_live
from engine.trove.config import TroveConfig
from engine.trove.manifest import load_manifest
from engine.trove.process import TroveProcess
from engine.trove.query import TroveReader

#: How long to wait for the server's first committed segment (its build, then one flush).
_START_TIMEOUT_S = 300.0


def _durable_seq(trove: Path) -> int:
    manifest = load_manifest(trove)
    return manifest.durable_through_seq if manifest is not None else 0


def _rows(trove: Path) -> int:
    manifest = load_manifest(trove)
    return manifest.rows if manifest is not None else 0


def history_window(trove: Path) -> tuple[int, int]:
    """The last simulated day the trove holds (its start), and the accounts its rows are over (the
    largest payer + 1, from the payer-sorted files' statistics): what the probe queries."""
    import pyarrow.parquet as pq

    manifest = load_manifest(trove)
    if manifest is None or not manifest.segments:
        raise ValueError(f"{trove} holds no trove rows to query (no trove.json or no segments)")
    accounts = 0
    for s in manifest.segments:
        meta = pq.read_metadata(trove / s.file("payer").path)
        column = meta.schema.names.index("payer")
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(column).statistics
            if stats is not None and stats.has_min_max:
                accounts = max(accounts, int(stats.max) + 1)
    newest_ns = max(s.max_timestamp_ns for s in manifest.segments)
    return newest_ns + 1 - NS_PER_DAY, accounts


def preload(trove: Path, rows: int, accounts: int, seed: int) -> float:
    """Bulk-load ``rows`` seeded rows ending where the run's simulated clock starts; seconds taken."""
    t0 = time.perf_counter()
    days = -(-rows // accounts)  # the seeded rows advance one day per ``accounts`` payments
    feed = TroveProcess.open(TroveConfig(dir=str(trove)))
    try:
        bulk_load(feed, rows, accounts, seed, start_ns=CLOCK_START_NS - days * NS_PER_DAY)
        feed.compact_all()
    finally:
        feed.close()
    return time.perf_counter() - t0


def under_load(args: argparse.Namespace) -> dict[str, Any]:
    """Give the trove its history, start the run, probe while it writes, wait for its verdict."""
    queried = Path(args.trove_dir) if args.trove_dir else None
    if queried is not None and load_manifest(queried) is None:
        raise ValueError(f"--trove-dir {queried} is not a trove (no trove.json)")
    scratch = queried.parent if queried is not None else None  # the same filesystem as the trove
    out = Path(args.out or tempfile.mkdtemp(prefix="cbdc-trove-load-", dir=scratch))
    out.mkdir(parents=True, exist_ok=True)
    preload_s = 0.0
    if queried is None:
        queried = written = out / "trove"
        if queried.exists():
            raise ValueError(f"{queried} exists: give a fresh --out (the run's trove is created there)")
        if args.preload_rows:
            preload_s = preload(queried, int(args.preload_rows), int(args.accounts), args.seed)
    else:
        written = queried if args.into_trove_dir else out / "trove"
    rows_before, seq_before = _rows(queried), _durable_seq(written)
    day_start_ns, trove_accounts = history_window(queried) if rows_before else (None, int(args.accounts))
    kinds = tuple(args.kinds.split(","))
    sidecars = None
    if rows_before and set(kinds) & set(SIDECAR_KINDS):
        # Before the server starts: the sidecars' build is a one-off cost per run file (timed
        # here), not a query's; runs the server adds to a shared trove get theirs when first asked.
        reader = TroveReader.open(queried)
        try:
            sidecars = reader.build_sidecars()
        finally:
            reader.close()
    cmd = [sys.executable, "-m", "loadgen", "run", "--profile", args.profile, "--rate", str(args.rate)]
    cmd += ["--seconds", str(args.seconds), "--warmup", str(args.warmup), "--accounts", str(int(args.accounts))]
    cmd += ["--trove", str(written), "--out", str(out / "results")]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while _durable_seq(written) <= seq_before and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        probe_t0 = time.perf_counter()
        queries = probe_live(
            str(queried),
            seconds=args.probe_seconds,
            accounts=trove_accounts,
            seed=args.seed,
            day_start_ns=day_start_ns,
            kinds=kinds,
            max_queries=max_queries(args.max_queries, kinds),
        )
        probe_s = time.perf_counter() - probe_t0
        run_still_going = run.poll() is None  # False: some queries ran after the load had stopped
        stdout, _ = run.communicate()
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait()
    lines = [line for line in stdout.splitlines() if line.strip()]
    result: dict[str, Any] = {
        "command": " ".join(cmd),
        "queried_trove": str(queried),
        "server_wrote_into_queried_trove": written == queried,
        "rows_before": rows_before,
        "preload_s": preload_s,
        "queried_day_start": iso_cst(day_start_ns) if day_start_ns is not None else "the newest day",
        "queried_accounts": trove_accounts,
        "rows_after": _rows(queried),
        "sidecars": sidecars,
        "queries": queries,
        "probe_s": probe_s,
        "run_outlasted_probe": run_still_going,
        "run_exit_status": run.returncode,
        "verdict": lines[-1] if lines else "",
    }
    files = sorted((out / "results").glob("*.json"))
    if files:  # the run's own figures: rate and latency achieved, the trove's backlog and cost
        run_result = json.loads(files[-1].read_bytes())
        summary = run_result["summary"]
        result["run"] = {k: summary[k] for k in ("achieved_tps", "achieved_ratio", "p50_ms", "p99_ms", "audit_ok")}
        result["run"]["server_trove"] = run_result["server"].get("trove")
        result["run"]["surveillance_log_ns_per_transfer"] = (
            run_result["server"].get("hooks", {}).get("surveillance_log", {}).get("ns_per_transfer")
        )
    if written != Path(args.trove_dir or "") and not args.keep_trove:
        shutil.rmtree(written, ignore_errors=True)
    if not args.out:  # a temporary directory: nothing is left behind (the figures are printed)
        shutil.rmtree(out, ignore_errors=True)
    else:
        result["results_dir"] = str(out / "results")
    return result


def max_queries(spec: str, kinds: tuple[str, ...]) -> dict[str, int]:
    """``--max-queries``: "N" (every kind) or "N,kind=M,..." (a default and bounds per kind); "" none."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        kind, _, n = part.rpartition("=")
        if kind and kind not in kinds:
            raise ValueError(f"--max-queries names {kind!r}, which is not among --kinds {','.join(kinds)}")
        if not n.isdigit():
            raise ValueError(f"--max-queries: {part!r} is not N or KIND=N")
        out.update({kind: int(n)} if kind else dict.fromkeys(kinds, int(n)) | out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="full", help="a profile that keeps a trove (default full)")
    p.add_argument("--rate", type=parse_count, default=300_000, help="offered payments/s (default 300000)")
    p.add_argument("--seconds", type=float, default=60.0, help="the run's measured window (default 60)")
    p.add_argument("--warmup", type=float, default=5.0, help="the run's warm-up (default 5)")
    p.add_argument("--probe-seconds", type=float, default=0.0, help="query for this long (default: --seconds)")
    p.add_argument("--accounts", type=parse_count, default=1_000_000, help="ledger accounts (default 1e6)")
    p.add_argument("--preload-rows", type=parse_count, default=0, help="bulk-load this many rows first (e.g. 1e7)")
    p.add_argument("--seed", type=int, default=20_261_203)
    p.add_argument("--out", default="", help="directory for the trove and the run's result (default: temporary)")
    p.add_argument("--keep-trove", action="store_true", help="keep OUT/trove afterwards")
    p.add_argument(
        "--kinds",
        default=",".join(QUERY_KINDS),
        help="query kinds per round, comma-separated (default all; e.g. payments_day for many samples at 1e9 rows)",
    )
    p.add_argument(
        "--max-queries",
        default="",
        help="stop a kind after this many timed queries: N, or N,KIND=M,... (default: none, query until the end)",
    )
    p.add_argument("--trove-dir", default="", help="query this existing trove (not loaded, not deleted)")
    p.add_argument(
        "--into-trove-dir",
        action="store_true",
        help="with --trove-dir: the server writes into that trove too (default: its own, next to it)",
    )
    args = p.parse_args(argv)
    args.probe_seconds = args.probe_seconds or args.seconds
    if args.trove_dir and args.preload_rows:
        p.error("--preload-rows loads a fresh trove; --trove-dir queries an existing one: give one of them")
    if args.into_trove_dir and not args.trove_dir:
        p.error("--into-trove-dir needs --trove-dir")
    print(json.dumps(under_load(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
