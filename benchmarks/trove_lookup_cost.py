"""Where a person's-day lookup's time goes in a big trove (issue 17): the sparse index, disk, decoding.

Against an existing trove (e.g. a 10^9-row ``trove build``), for ``--queries`` random people over
the trove's last simulated day:

* the index: time and memory (this process's RSS) to open every file and read the account
  column's min/max per row group from the footers, the row groups and footer bytes on disk;
* per lookup, three ways: ``whole`` (what the reader did before: every row group whose min/max
  can hold the person, all columns), ``column-first`` (``TroveReader.payments`` with one lookup
  thread: the account column of those row groups, whole groups only where the person is), and
  ``column-first-parallel`` (the same on ``LOOKUP_THREADS`` threads). For each: p50/p99 wall
  ms, CPU ms per lookup (all threads: decoding), bytes the disk delivered per lookup
  (``/proc/self/io`` read_bytes: page-cache misses only), row groups read;
* each way twice over the same people: ``cold`` (their blocks mostly not in the page cache, as
  when a trove is larger than memory) and ``warm`` (just read): the difference is disk wait.

The people of each way are different draws, so one way's reads do not warm the next one's.
Prints one JSON object. A quiet-machine re-take at 10^9 rows takes ~1-2 minutes:

    python -m benchmarks.trove_lookup_cost --trove-dir /work/big-tquery/t1e9 --queries 200

``--kinds K1,K2,...`` times those query kinds instead (``engine.trove.bench.time_queries``, idle,
the same subjects for every kind, so a kind and its DuckDB form ``K_sql`` answer for the same
people: the old and the new path in one run), after building the runs' sidecars (timed apart):

    python -m benchmarks.trove_lookup_cost --trove-dir DIR --queries 20 \
        --kinds counterparties_2hop,counterparties_2hop_sql,same_device,same_device_sql
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.trove_under_load import history_window
from engine.simtime import NS_PER_DAY
from engine.trove.bench import SIDECAR_KINDS, time_queries
from engine.trove.manifest import load_manifest
from engine.trove.query import LOOKUP_THREADS, TroveReader


def _disk_read_bytes() -> int:
    for line in Path(f"/proc/{os.getpid()}/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def _rss_bytes() -> int:
    return int(Path(f"/proc/{os.getpid()}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _footer_bytes(path: Path) -> int:
    with path.open("rb") as f:
        f.seek(-8, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _whole(reader: TroveReader, account: int, files: list[tuple[str, str]]) -> int:
    """The previous lookup: every row group whose min/max can hold ``account``, all columns."""
    groups_read = 0
    for column, path in files:
        index = reader._index(path, column)
        groups = np.flatnonzero((index.mins <= account) & (index.maxs >= account))
        if len(groups):
            index.file.read_row_groups(groups.tolist(), use_threads=False)
            groups_read += len(groups)
    reader._count("whole_groups", groups_read)
    return groups_read


def _time(fn: Any, accounts: list[int]) -> dict[str, float]:
    ms, cpu_ms, disk = [], [], []
    for a in accounts:
        d0, c0, t0 = _disk_read_bytes(), time.process_time(), time.perf_counter()
        fn(a)
        ms.append((time.perf_counter() - t0) * 1e3)
        cpu_ms.append((time.process_time() - c0) * 1e3)
        disk.append(_disk_read_bytes() - d0)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(np.mean(ms)),
        "cpu_ms_mean": float(np.mean(cpu_ms)),
        "disk_kb_mean": float(np.mean(disk)) / 1e3,
    }


def lookup_cost(trove: Path, queries: int, seed: int) -> dict[str, Any]:
    manifest = load_manifest(trove)
    if manifest is None:
        raise ValueError(f"{trove} is not a trove (no trove.json)")
    day_start, accounts = history_window(trove)
    window = (day_start, day_start + NS_PER_DAY)
    files = [
        (column, str(trove / s.file(column).path))
        for column in ("payer", "payee")
        for s in manifest.segments
        if s.max_timestamp_ns >= window[0] and s.min_timestamp_ns < window[1]
    ]
    out: dict[str, Any] = {"trove": str(trove), "rows": manifest.rows, "files_per_lookup": len(files)}
    rss0, t0 = _rss_bytes(), time.perf_counter()
    reader = TroveReader.open(trove, lookup_threads=1)
    groups = 0
    for column, path in files:
        groups += len(reader._index(path, column).mins)
    out["index"] = {
        "open_s": time.perf_counter() - t0,
        "rss_mb": (_rss_bytes() - rss0) / 1e6,
        "row_groups": groups,
        "footer_mb_on_disk": sum(_footer_bytes(Path(p)) for _, p in files) / 1e6,
    }
    parallel = TroveReader.open(trove, lookup_threads=LOOKUP_THREADS)
    parallel._row_groups = reader._row_groups  # the same index: not read again
    rng = np.random.default_rng(seed)
    ways = {
        "whole": lambda a: _whole(reader, a, files),
        "column-first": lambda a: reader.payments(a, *window),
        "column-first-parallel": lambda a: parallel.payments(a, *window),
    }
    try:
        for name, fn in ways.items():
            people = rng.integers(0, accounts, queries).tolist()
            before = dict(reader.lookup_counts), dict(parallel.lookup_counts)
            cold = _time(fn, people)
            counts = {
                k: reader.lookup_counts[k] + parallel.lookup_counts[k] - before[0][k] - before[1][k] for k in before[0]
            }
            out[name] = {
                "cold": cold,
                "warm": _time(fn, people),
                "row_groups_per_lookup": {k: v / queries for k, v in counts.items()},
            }
    finally:
        reader.close()
        parallel.close()
    return out


def kinds_cost(trove: Path, queries: int, seed: int, kinds: tuple[str, ...]) -> dict[str, Any]:
    """Each of ``kinds`` timed for ``queries`` subjects over the trove's last day (its first hour
    for the hour kinds), idle; the sidecars built first (and their cost reported)."""
    day_start, accounts = history_window(trove)
    reader = TroveReader.open(trove)
    sidecars = reader.build_sidecars() if set(kinds) & set(SIDECAR_KINDS) else None
    t0 = time.perf_counter()
    timings = time_queries(reader, accounts, seed, queries, kinds=kinds, day_start_ns=day_start)
    return {"trove": str(trove), "sidecars": sidecars, "seconds": time.perf_counter() - t0, "queries": timings}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trove-dir", required=True, help="an existing trove (not changed)")
    p.add_argument("--queries", type=int, default=100, help="people per way (default 100)")
    p.add_argument("--seed", type=int, default=20_261_203)
    p.add_argument("--kinds", default="", help="time these query kinds instead, e.g. same_device,same_device_sql")
    args = p.parse_args(argv)
    if args.kinds:
        out = kinds_cost(Path(args.trove_dir), args.queries, args.seed, tuple(args.kinds.split(",")))
    else:
        out = lookup_cost(Path(args.trove_dir), args.queries, args.seed)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
