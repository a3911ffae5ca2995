"""Durability cost table from ``cbdc-bench run`` result files: one folder per journal setting.

    for cfg in none off interval:10 batch; do
      j=""; [ $cfg != none ] && j="--journal /tmp/jnl --fsync $cfg"
      cbdc-bench run --accounts 200000 --rate 200000 --seconds 5 --warmup 1 --out results/durability/${cfg/:/-} $j
    done
    python benchmarks/durability_table.py results/durability none off interval-10 batch

Durability figures come from each result's ``server.durability`` (the server's journal stats
differenced over the measured window).
"""

from __future__ import annotations

import glob
import json
import sys


def _row(name: str, path: str) -> str:
    with open(path) as f:
        r = json.load(f)
    s, server = r["summary"], r["server"]
    d = server["durability"]
    s0, s1 = server.get("stats_start") or {}, server.get("stats_end") or {}
    batches = (s1.get("batches", 0) - s0.get("batches", 0)) / s["seconds"]
    cells = [
        f"{name} ({d['fsync']})",
        f"{s['achieved_tps']:,.0f}",
        f"{s['p50_ms']:.2f}",
        f"{s['p99_ms']:.2f}",
        f"{s['p999_ms']:.1f}",
        f"{batches:,.0f}",
        f"{d['fsyncs_per_s']:,.0f}",
        f"{d['fsync_ms_per_s']:.1f}",
        f"{d['journal_mb_per_s']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    root, names = sys.argv[1], sys.argv[2:]
    print("| journal | achieved/s | p50 ms | p99 ms | p99.9 ms | batches/s | fsyncs/s | fsync ms/s | journal MB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        for path in sorted(glob.glob(f"{root}/{name}/*.json")):
            print(_row(name, path))


if __name__ == "__main__":
    main()
