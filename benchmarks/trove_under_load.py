"""Query latency under load: the trove queried while a server writes it at a given rate (issue 17).

Starts ``cbdc-bench run --profile full --rate R --trove DIR`` (its own server and open-loop
generator) and, once the server's first segment is committed, times every query kind against
the same DIR from this process for ``--probe-seconds`` (``cbdc-bench trove probe``: the same disk
and the same trove the server is writing and compacting). With ``--preload-rows N`` the trove is
first bulk-loaded with N seeded rows (and compacted), so the queries run against a trove of that
size, not only the run's own rows. Prints one JSON object: p50/p99 per query kind, the run's
verdict line and exit status (0 sustained, 3 not sustained, 4 generator behind, 5 incomplete),
and the trove's rows before and after.

Quiet-machine command (~3-4 min with the preload):

    python -m benchmarks.trove_under_load --rate 300000 --seconds 60 --preload-rows 1e7

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

from engine.options import parse_count
from engine.trove.bench import bulk_load, probe_live
from engine.trove.config import TroveConfig
from engine.trove.manifest import load_manifest
from engine.trove.process import TroveProcess

#: How long to wait for the server's first committed segment (its build, then one flush).
_START_TIMEOUT_S = 300.0


def _durable_seq(trove: Path) -> int:
    manifest = load_manifest(trove)
    return manifest.durable_through_seq if manifest is not None else 0


def _rows(trove: Path) -> int:
    manifest = load_manifest(trove)
    return manifest.rows if manifest is not None else 0


def under_load(args: argparse.Namespace) -> dict[str, Any]:
    """Preload, start the run, probe while it writes, wait for its verdict."""
    out = Path(args.out or tempfile.mkdtemp(prefix="cbdc-trove-load-"))
    out.mkdir(parents=True, exist_ok=True)
    trove = out / "trove"
    if trove.exists():
        raise ValueError(f"{trove} exists: give a fresh --out (the run's trove is created there)")
    preload_s = 0.0
    if args.preload_rows:
        t0 = time.perf_counter()
        feed = TroveProcess.open(TroveConfig(dir=str(trove)))
        try:
            bulk_load(feed, int(args.preload_rows), int(args.accounts), args.seed)
            feed.compact_all()
        finally:
            feed.close()
        preload_s = time.perf_counter() - t0
    rows_before, seq_before = _rows(trove), _durable_seq(trove)
    cmd = [sys.executable, "-m", "loadgen", "run", "--profile", args.profile, "--rate", str(args.rate)]
    cmd += ["--seconds", str(args.seconds), "--warmup", str(args.warmup), "--accounts", str(int(args.accounts))]
    cmd += ["--trove", str(trove), "--out", str(out / "results")]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while _durable_seq(trove) <= seq_before and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        queries = probe_live(str(trove), seconds=args.probe_seconds, accounts=int(args.accounts), seed=args.seed)
        stdout, _ = run.communicate()
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait()
    lines = [line for line in stdout.splitlines() if line.strip()]
    result: dict[str, Any] = {
        "command": " ".join(cmd),
        "preload_rows": rows_before,
        "preload_s": preload_s,
        "trove_rows_after": _rows(trove),
        "queries": queries,
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
    if not args.keep_trove:
        shutil.rmtree(trove, ignore_errors=True)
    if not args.out:  # a temporary directory: nothing is left behind (the figures are printed)
        shutil.rmtree(out, ignore_errors=True)
    else:
        result["results_dir"] = str(out / "results")
    return result


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
    args = p.parse_args(argv)
    args.probe_seconds = args.probe_seconds or args.seconds
    print(json.dumps(under_load(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
