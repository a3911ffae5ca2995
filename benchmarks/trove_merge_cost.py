"""The trove's CPU per row, split: the writer, one merge, and how many merges the policy makes (issue 17).

A row's steady-state cost is the writer's plus one merge per tier it passes through, so this
measures the two and counts the tiers instead of loading the 10^9 rows a steady state needs:

* ``writer_ns_per_row`` and ``merge_ns_per_row_merged``: ``--rows`` seeded rows in one partition
  (one simulated day holds them all) through a ``Trove`` run as threads of this process, in
  segments of ``--segment-rows`` (what 1-second flushes make at that rate), the merges the policy
  calls for done as they fall due; each thread's own CPU clock.
* ``merges_per_row``: the size-tiered policy (``compaction.plan``) simulated over
  ``--policy-rows`` rows of such segments in one partition (no data: segment sizes only), with
  the runs a partition holds at the end (what a query of that day reads, one row group each).
* ``steady_ns_per_row`` = writer + merges_per_row x merge.

Prints one JSON object. About a minute on a quiet 2-core machine:

    python -m benchmarks.trove_merge_cost --rows 8e6 --segment-rows 5e5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from engine.options import parse_count
from engine.trove import compaction
from engine.trove.bench import bulk_load
from engine.trove.config import TroveConfig
from engine.trove.manifest import Manifest, Segment
from engine.trove.store import Trove


def simulate_policy(config: TroveConfig, segment_rows: int, rows: int) -> dict[str, float]:
    """Rows merged per row written, and runs left, for ``rows`` rows in segments of ``segment_rows``."""
    m = Manifest(trove_id="simulated", partition_ns=config.partition_ns, partition_starts=[0])
    written = merged = 0
    while written < rows:
        n = min(segment_rows, rows - written)
        m.segments.append(_segment(m, n, compaction.tier_of(n, config)))
        written += n
        while sources := compaction.plan(m, config):
            out = sum(s.rows for s in sources)
            merged += out
            ids = {s.id for s in sources}
            m.segments = [s for s in m.segments if s.id not in ids] + [
                _segment(m, out, compaction.tier_of(out, config))
            ]
    return {"merges_per_row": merged / written, "runs_at_end": float(len(m.segments))}


def _segment(m: Manifest, rows: int, tier: int) -> Segment:
    m.next_segment_id += 1
    return Segment(m.next_segment_id, "run", 0, rows, 0, 0, [], [], tier)


def measure(rows: int, segment_rows: int, config: TroveConfig) -> dict[str, Any]:
    """Writer and merge CPU per row, threads of this process, one partition."""
    root = Path(tempfile.mkdtemp(prefix="cbdc-trove-cost-"))
    cfg = msgspec.structs.replace(config, dir=str(root / "t"), process=False, segment_rows=segment_rows)
    trove = Trove.open(cfg)
    try:
        t0 = time.perf_counter()
        bulk_load(trove, rows, accounts=10**9, seed=1)  # 10^9 accounts: a simulated day holds every row
        trove.compact_due()
        stats = trove.stats()
        wall_s = time.perf_counter() - t0
    finally:
        trove.close()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "writer_ns_per_row": stats["writer_cpu_ns"] / rows,
        "merge_ns_per_row_merged": stats["compaction_cpu_ns"] / max(stats["rows_merged"], 1),
        "rows_merged": stats["rows_merged"],
        "bytes_per_row": stats["bytes_per_row"],
        "wall_s": wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=parse_count, default=8_000_000, help="rows to write and merge (default 8e6)")
    p.add_argument("--segment-rows", type=parse_count, default=500_000, help="rows per segment (default 5e5)")
    p.add_argument("--policy-rows", type=parse_count, default=1 << 29, help="rows of the simulated policy (2^29)")
    p.add_argument("--fanin", type=int, default=TroveConfig().fanin, help="runs per merge (default: the config's)")
    args = p.parse_args(argv)
    config = TroveConfig(fanin=args.fanin)
    out: dict[str, Any] = {"fanin": config.fanin, "segment_rows": int(args.segment_rows)}
    out |= simulate_policy(config, int(args.segment_rows), int(args.policy_rows))
    out |= measure(int(args.rows), int(args.segment_rows), config)
    out["steady_ns_per_row"] = out["writer_ns_per_row"] + out["merges_per_row"] * out["merge_ns_per_row_merged"]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
