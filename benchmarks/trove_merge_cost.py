"""The trove's CPU per row, split: the writer, one merge, and how many merges the policy makes (issue 17).

A row's steady-state cost is the writer's plus one merge per tier it passes through, so this
measures the two and counts the tiers instead of loading the 10^9 rows a steady state needs:

* ``writer_ns_per_row`` and ``merge_ns_per_row_merged``: ``--rows`` seeded rows in one partition
  (one simulated day holds them all) through a ``Trove`` run as threads of this process, in
  segments of ``measured_segment_rows`` (``--segment-rows``, or ``--rows / (2 fanin)`` if smaller,
  so that there are ``fanin`` runs in the intermediate codec to merge: a merge's CPU per row
  merged hardly depends on the size of its sources); then one merge of ``fanin`` of them timed
  twice, as an intermediate merge (plain out, `intermediate_compression`) and as a merge into the last tier (zstd out).
* ``merges_per_row``: the size-tiered policy (``compaction.plan_merge``) simulated over
  ``--policy-rows`` rows of segments of ``--segment-rows`` in one partition (no data: segment
  sizes only), with the runs the partition holds while live (at most, on average) and at the end,
  closed (what a query of that day reads, one row group each). ``--segment-rows`` is what the
  writer's flushes make: the configured ``segment_rows`` (its memtable) when the rate fills it
  within ``flush_interval_s``, else the rate times the interval (e.g. 5e5 for 1-second flushes
  at 500,000/s).
* ``writer_memtable_ns_per_row``: one memtable of ``--segment-rows`` rows written as the writer
  does in a partition's steady state (intermediate codec); sorting and gathering 2^22 rows cost
  more per row than the smaller segments above.
* ``steady_ns_per_row`` = writer (the larger of the two) + intermediate merges per row x an intermediate merge's CPU per
  row + last-tier merges per row x a last-tier merge's (zstd costs more to write than plain).

``--layout-rows 1e9``: only the runs ``trove build`` would leave for that many rows and accounts
(``bulk.plan_runs``: the writer's flushes of ``--segment-rows`` and the policy, on metadata, in
seconds) and the files a person's day in the last day reads.

Prints one JSON object. Under a minute each on a quiet 2-core machine (1-second runs at
500,000/s, what the default flushes make, then a 2^22-row memtable):

    python -m benchmarks.trove_merge_cost --rows 8e6 --segment-rows 5e5
    python -m benchmarks.trove_merge_cost --rows 8e6 --segment-rows 4194304
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow.parquet as pq

from engine.options import parse_count
from engine.records import MAX_BATCH
from engine.trove import compaction
from engine.trove.bench import bulk_load, seeded_batches
from engine.trove.config import TroveConfig
from engine.trove.manifest import Manifest, Segment
from engine.trove.process import child_malloc_env
from engine.trove.schema import arrow_schema, concat_rows, rows_of
from engine.trove.store import Trove


def simulate_policy(config: TroveConfig, segment_rows: int, rows: int) -> dict[str, float]:
    """Rows merged per row written (into an intermediate tier, and into a final run, zstd), and the
    runs the partition holds (what a query of that day reads, two files each): at most and on
    average while it is live (after each flush's merges), and at the end once it is closed (the
    final flush's ``everything``), for ``rows`` rows in segments of ``segment_rows``."""
    m = Manifest(trove_id="simulated", partition_ns=config.partition_ns, partition_starts=[0])
    written = merged = merged_final = 0
    live_runs: list[int] = []

    def merge_due(everything: bool) -> None:
        nonlocal merged, merged_final
        while step := compaction.plan_merge(m, config, everything=everything):
            merged += step.rows
            merged_final += step.rows if step.final else 0
            ids = {s.id for s in step.sources}
            m.segments = [s for s in m.segments if s.id not in ids] + [
                _segment(m, step.rows, compaction.tier_of(step.rows, config))
            ]

    while written < rows:
        n = min(segment_rows, rows - written)
        m.segments.append(_segment(m, n, compaction.tier_of(n, config)))
        written += n
        merge_due(everything=False)
        live_runs.append(len(m.segments))
    merge_due(everything=True)
    return {
        "merges_per_row": merged / written,
        "last_tier_merges_per_row": merged_final / written,
        "runs_live_max": float(max(live_runs)),
        "runs_live_mean": sum(live_runs) / len(live_runs),
        "runs_at_end": float(len(m.segments)),
    }


def _segment(m: Manifest, rows: int, tier: int) -> Segment:
    m.next_segment_id += 1
    return Segment(m.next_segment_id, "run", 0, rows, 0, 0, [], [], tier)


def measure(rows: int, segment_rows: int, config: TroveConfig) -> dict[str, Any]:
    """Writer CPU per row, and one merge's CPU per row merged into an intermediate tier and into the last.

    The writer (a thread of this process) writes ``rows`` rows in one partition, flushing by rows.
    Then the last ``fanin`` of its runs (written with the intermediate codec, as all but a
    partition's first ``fanin - 1`` are) are merged twice on this thread, timed by its CPU
    clock: as the policy merges them below the last tier (plain output) and into the last (zstd).
    """
    root = Path(tempfile.mkdtemp(prefix="cbdc-trove-cost-"))
    cfg = msgspec.structs.replace(config, dir=str(root / "t"), process=False, segment_rows=segment_rows, compact=False)
    cfg = msgspec.structs.replace(cfg, flush_interval_s=max(cfg.flush_interval_s, 60.0))  # flushes by rows only
    trove = Trove.open(cfg)
    out: dict[str, Any] = {}
    try:
        bulk_load(trove, rows, accounts=10**9, seed=1)  # 10^9 accounts: a simulated day holds every row
        stats = trove.stats()
        out["writer_ns_per_row"] = stats["writer_cpu_ns"] / rows
        out["bytes_per_row_written"] = stats["bytes_per_row"]
        sources = trove.manifest.segments[-cfg.fanin :]
        merged = sum(s.rows for s in sources)
        out["merge_rows"] = merged
        first_file = pq.read_metadata(trove.root / sources[0].files[0].path)
        out["merge_source_codec"] = first_file.row_group(0).column(0).compression
        for name, max_run_rows in (("intermediate", cfg.max_run_rows), ("last", merged)):
            merge_cfg = msgspec.structs.replace(cfg, max_run_rows=max(max_run_rows, merged))
            t0 = time.thread_time_ns()
            run = compaction.merge(
                trove.root,
                sources,
                10**6 + len(out),
                trove.manifest.trove_id,
                merge_cfg,
                duckdb_connection=trove._duckdb,
            )
            out[f"merge_{name}_ns_per_row_merged"] = (time.thread_time_ns() - t0) / merged
            out[f"merge_{name}_bytes_per_row"] = run.bytes / run.rows
    finally:
        trove.close()
        shutil.rmtree(root, ignore_errors=True)
    return out


def measure_writer(segment_rows: int, config: TroveConfig, memtables: int = 1) -> dict[str, Any]:
    """The writer's CPU per row for a memtable of ``segment_rows`` rows (written as a partition's
    runs are once it holds ``fanin - 1`` of them: in the intermediate codec): the batches turned
    into columns, concatenated, sorted and written in both orderings, on this thread's CPU clock.
    (``measure`` times the writer at the merge's smaller segments: sorting and gathering 2^22
    rows cost more per row than 2^19, out of the CPU's caches.) With ``memtables`` > 1, the mean
    of all but the first, as the trove process writes them one after another: the first faults its
    memory in whatever the allocator does (``process.child_malloc_env``), the later ones reuse it
    or not."""
    root = Path(tempfile.mkdtemp(prefix="cbdc-trove-cost-"))
    trove = Trove.open(msgspec.structs.replace(config, dir=str(root / "t"), process=False, compact=False), start=False)
    each: list[float] = []
    try:
        codes = np.zeros(MAX_BATCH, dtype=np.uint8)
        batches = list(seeded_batches(segment_rows, 10**9, seed=2))
        for _ in range(max(memtables, 1)):
            owned = [b.copy() for b in batches]  # fresh arrays each time, as the ring's copies are
            t0 = time.thread_time_ns()
            cols = concat_rows([rows_of(b, codes[: len(b)], seq) for seq, b in enumerate(owned, start=1)])
            trove._write_run(cols, 0, [(1, len(owned))], arrow_schema(), final=False)
            del cols, owned
            each.append((time.thread_time_ns() - t0) / segment_rows)
    finally:
        trove.close()
        shutil.rmtree(root, ignore_errors=True)
    steady = each[1:] or each
    return {"writer_memtable_ns_per_row": sum(steady) / len(steady), "writer_memtables_ns_per_row": each}


def layout(rows: int, config: TroveConfig) -> dict[str, Any]:
    """The runs the policy leaves for ``rows`` seeded rows over as many accounts (``trove build``'s
    plan, on metadata only: ``bulk.plan_runs``), and the files a person's day in the last simulated
    day reads (both orderings of every run that overlaps it)."""
    from engine.simtime import NS_PER_DAY
    from engine.trove.bulk import plan_runs

    plan = plan_runs(rows, rows, config)
    last_ns = max(r.max_timestamp_ns for r in plan.runs)
    per_partition: dict[int, int] = {}
    for r in plan.runs:
        per_partition[r.partition] = per_partition.get(r.partition, 0) + 1
    return {
        "layout_rows": rows,
        "layout_runs": len(plan.runs),
        "layout_runs_per_partition": per_partition,
        "layout_files_per_lookup": 2 * sum(r.max_timestamp_ns > last_ns - NS_PER_DAY for r in plan.runs),
        "layout_merges_per_row": plan.rows_merged / rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=parse_count, default=8_000_000, help="rows to write and merge (default 8e6)")
    p.add_argument(
        "--segment-rows",
        type=parse_count,
        default=TroveConfig().segment_rows,
        help="rows per segment the writer makes (default: the config's segment_rows)",
    )
    p.add_argument("--policy-rows", type=parse_count, default=1 << 29, help="rows of the simulated policy (2^29)")
    p.add_argument("--fanin", type=int, default=TroveConfig().fanin, help="runs per merge (default: the config's)")
    p.add_argument(
        "--intermediate-compression",
        default=TroveConfig().intermediate_compression,
        help="codec of files a merge reads again (default: the config's)",
    )
    p.add_argument(
        "--out",
        default="",
        help="also write the figures as a versioned result file in this folder (with the CPU's calibration "
        "score and the sidecars' cost), which 'cbdc-bench plan' reads as the trove's cost per row",
    )
    p.add_argument(
        "--layout-rows",
        type=parse_count,
        default=0,
        help="only the layout the policy leaves for this many rows and accounts (metadata, no data), e.g. 1e9",
    )
    p.add_argument(
        "--memtables",
        type=int,
        default=1,
        help="memtables the writer measurement writes in a row (>1: the mean of all but the first)",
    )
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="glibc's default malloc settings, not the trove process's (process.child_malloc_env): an A/B",
    )
    args = p.parse_args(argv)
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in child_malloc_env().items()):
        # The child's allocator settings take effect at start: run again under them, so the CPU
        # measured is the trove process's.
        argv = sys.argv[1:] if argv is None else argv
        command = [sys.executable, "-m", "benchmarks.trove_merge_cost", *argv]
        os.execve(sys.executable, command, {**os.environ, **child_malloc_env()})
    config = TroveConfig(fanin=args.fanin, intermediate_compression=args.intermediate_compression)
    if args.layout_rows:
        cfg = msgspec.structs.replace(config, segment_rows=int(args.segment_rows))
        print(json.dumps({"segment_rows": cfg.segment_rows, **layout(int(args.layout_rows), cfg)}, indent=1))
        return 0
    out: dict[str, Any] = {
        "fanin": config.fanin,
        "segment_rows": int(args.segment_rows),
        "intermediate_compression": config.intermediate_compression,
    }
    out |= simulate_policy(config, int(args.segment_rows), int(args.policy_rows))
    # Twice fanin segments at least: the last fanin are written with the intermediate codec.
    measured = min(int(args.segment_rows), int(args.rows) // (2 * config.fanin))
    out["measured_segment_rows"] = measured
    out |= measure(int(args.rows), measured, config)
    out |= measure_writer(int(args.segment_rows), config, args.memtables)
    out["steady_ns_per_row"] = (
        max(out["writer_ns_per_row"], out["writer_memtable_ns_per_row"])
        + (out["merges_per_row"] - out["last_tier_merges_per_row"]) * out["merge_intermediate_ns_per_row_merged"]
        + out["last_tier_merges_per_row"] * out["merge_last_ns_per_row_merged"]
    )
    if args.out:
        out["result_file"] = str(write_result(args.out, out, config, argv))
    print(json.dumps(out, indent=1))
    return 0


def measure_sidecars(rows: int, config: TroveConfig) -> dict[str, float]:
    """The per-run sidecars (every key) of ``rows`` seeded rows in runs of ``config.segment_rows``:
    process CPU and bytes per row (``TroveReader.build_sidecars`` on one thread, what
    ``trove sidecars`` or the first co-location or device query does)."""
    from engine.trove.query import TroveReader

    root = Path(tempfile.mkdtemp(prefix="cbdc-trove-cost-"))
    cfg = msgspec.structs.replace(config, dir=str(root / "t"), process=False, compact=False)
    trove = Trove.open(msgspec.structs.replace(cfg, flush_interval_s=max(cfg.flush_interval_s, 60.0)))
    try:
        bulk_load(trove, rows, accounts=10**9, seed=3)
        t0 = time.process_time_ns()
        built = TroveReader(trove=trove).build_sidecars(threads=1)
        return {
            "sidecar_ns_per_row": (time.process_time_ns() - t0) / rows,
            "sidecar_bytes_per_row": built["bytes_per_row"],
        }
    finally:
        trove.close()
        shutil.rmtree(root, ignore_errors=True)


def write_result(out_dir: str, figures: dict[str, Any], config: TroveConfig, argv: list[str] | None) -> Path:
    """``figures`` (``main``'s) with the sidecars' cost, this machine and its CPU calibration score, as
    a ``loadgen.plan.trove_cost.TroveCost`` file in ``out_dir``: the capacity plan's trove tier."""
    import shlex

    from loadgen.harness.calibration import cpu_calibration
    from loadgen.plan.trove_cost import TroveCost, save_trove_cost
    from loadgen.results.environment import collect

    sidecars = measure_sidecars(int(figures["measured_segment_rows"]), config)
    figures |= sidecars
    env = msgspec.structs.replace(collect(), calibration=cpu_calibration())
    words = sys.argv[1:] if argv is None else argv
    return save_trove_cost(
        TroveCost(
            command=shlex.join(["python", "-m", "benchmarks.trove_merge_cost", *words]),
            environment=env,
            writer_ns_per_row=max(figures["writer_ns_per_row"], figures["writer_memtable_ns_per_row"]),
            merges_per_row=figures["merges_per_row"],
            last_tier_merges_per_row=figures["last_tier_merges_per_row"],
            merge_intermediate_ns_per_row_merged=figures["merge_intermediate_ns_per_row_merged"],
            merge_last_ns_per_row_merged=figures["merge_last_ns_per_row_merged"],
            steady_ns_per_row=figures["steady_ns_per_row"],
            final_bytes_per_row=figures["merge_last_bytes_per_row"],
            sidecar_ns_per_row=sidecars["sidecar_ns_per_row"],
            sidecar_bytes_per_row=sidecars["sidecar_bytes_per_row"],
            settings={k: figures[k] for k in ("fanin", "segment_rows", "intermediate_compression", "runs_at_end")}
            | {"max_run_rows": config.max_run_rows},
        ),
        out_dir,
    )


if __name__ == "__main__":
    sys.exit(main())
