"""Compaction: runs sorted by account, merged size-tiered.

The writer writes a partition's first ``fanin - 1`` segments as tier-0 *runs*, sorted in memory
(``Trove._write_ingest``), and later ones in arrival order ("ingest" segments, where finding one
person's payments is a scan); ingest segments are merged into runs here. Each run is two files
holding the same rows, one sorted by (payer, time) and one by (payee, time), so "payments sent by N" and "payments
received by N" each read the one or two row groups (``row_group_rows`` rows) of each run whose
min/max statistics contain N. The second ordering doubles the bytes of compacted data: that is
the disk cost of answering "received" without a scan (a payer-sorted trove alone makes it a
full scan, ~2.7 s at 10^9 rows).

Merging is size-tiered (as Cassandra's STCS or an LSM tree): ``fanin`` runs of one tier merge
into one run of the next tier, and a run of ``max_run_rows`` or more is never rewritten, so the
work per row is bounded by the number of tiers (log_fanin(max_run_rows / segment_rows)) and a
large base is never rewritten wholesale. DuckDB sorts (out of core past its memory limit, on one
thread so that the compactor thread's CPU clock sees all of the work); pyarrow writes the files.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from engine.trove.config import TroveConfig
from engine.trove.files import write_parquet
from engine.trove.manifest import Manifest, Segment, merge_ranges
from engine.trove.schema import arrow_schema

if TYPE_CHECKING:
    import duckdb

#: The two account orderings of a run, and the sort key of each.
ORDERINGS = {
    "payer": "payer, timestamp_ns, batch_seq, batch_index",
    "payee": "payee, timestamp_ns, batch_seq, batch_index",
}


def tier_of(rows: int, config: TroveConfig) -> int:
    """0 below ``fanin`` segments' worth of rows, then one tier per factor of ``fanin``."""
    tier, size = 0, config.segment_rows * config.fanin
    while rows >= size:
        tier += 1
        size *= config.fanin
    return tier


def plan(manifest: Manifest, config: TroveConfig, *, everything: bool = False) -> list[Segment]:
    """The sources of the next merge (empty: nothing to do), oldest partition first.

    A partition's ingest segments are merged once there are ``fanin`` of them, once a newer
    partition exists (the partition is closed), or when ``everything`` (a final flush) is asked;
    runs of one tier are merged ``fanin`` at a time while the result stays within ``max_run_rows``.
    """
    by_partition: dict[int, list[Segment]] = defaultdict(list)
    for s in manifest.segments:
        by_partition[s.partition].append(s)
    if not by_partition:
        return []
    newest = max(by_partition)
    for part in sorted(by_partition):
        segs = by_partition[part]
        ingest = [s for s in segs if s.kind == "ingest"]
        if ingest and (len(ingest) >= config.fanin or part != newest or everything):
            chosen: list[Segment] = []
            rows = 0
            for s in ingest:
                if chosen and rows + s.rows > config.max_run_rows:
                    break
                chosen.append(s)
                rows += s.rows
            return chosen
        tiers: dict[int, list[Segment]] = defaultdict(list)
        for s in segs:
            if s.kind == "run" and s.rows < config.max_run_rows:
                tiers[s.tier].append(s)
        for tier in sorted(tiers):
            runs = sorted(tiers[tier], key=lambda s: s.rows)[: config.fanin]
            if len(runs) == config.fanin and sum(s.rows for s in runs) <= config.max_run_rows:
                return runs
    return []


def merge(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    sources: list[Segment],
    segment_id: int,
    trove_id: str,
    config: TroveConfig,
) -> Segment:
    """Write the rows of ``sources`` as one run (both orderings); the sources are left in place."""
    schema = arrow_schema()
    part = sources[0].partition
    files = []
    rows = 0
    for ordering, key in ORDERINGS.items():
        paths = [str(root / s.file(ordering).path) for s in sources]
        reader = con.sql(f"SELECT * FROM read_parquet($paths) ORDER BY {key}", params={"paths": paths}).to_arrow_reader(
            config.row_group_rows * 8
        )
        batches = (b if b.schema.equals(schema) else b.cast(schema) for b in reader)
        entry, rows = write_parquet(
            root,
            f"runs/p{part}/r{segment_id:08d}.{ordering}.parquet",
            ordering,
            batches,
            schema,
            trove_id=trove_id,
            segment_id=segment_id,
            row_group_rows=config.row_group_rows,
        )
        files.append(entry)
    expected = sum(s.rows for s in sources)
    if rows != expected:
        raise RuntimeError(f"compaction of segments {[s.id for s in sources]} wrote {rows} rows, expected {expected}")
    return Segment(
        id=segment_id,
        kind="run",
        partition=part,
        rows=rows,
        min_timestamp_ns=min(s.min_timestamp_ns for s in sources),
        max_timestamp_ns=max(s.max_timestamp_ns for s in sources),
        seq_ranges=merge_ranges([r for s in sources for r in s.seq_ranges]),
        files=files,
        tier=tier_of(rows, config),
    )


#: DuckDB's spill directory for sorts past ``compaction_memory_mb``, inside the trove: the scratch is
#: on the trove's disk (counted in its disk need), not in whatever directory the server started in.
SPILL_DIR = "compaction.tmp"


def connect(config: TroveConfig, root: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for merging: one thread (its CPU is the calling thread's), bounded memory,
    spilling under ``root``."""
    import duckdb

    con = duckdb.connect(
        config={
            "threads": 1,
            "memory_limit": f"{config.compaction_memory_mb}MB",
            "preserve_insertion_order": False,
            "temp_directory": str(root / SPILL_DIR),
        }
    )
    con.execute("SET enable_progress_bar = false")  # it would print to the server's stdout
    return con
