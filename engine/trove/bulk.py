"""``trove build``: a seeded trove written straight into the layout its writer and compactor would
leave, without going through them (the bulk path for 10^9-row query figures in minutes).

``trove bench`` loads rows through the writer (a tier-0 run per flush) and lets the size-tiered
compactor merge them: at 10^9 rows that rewrites every row two or three times (two hours on this
machine). The queries only see the result: per partition, the runs the policy leaves, each one
file sorted by (payer, time) and one by (payee, time), with the trove's schema, codec and row
groups, listed in the manifest. ``build`` writes that result directly:

1. ``plan_runs`` replays the writer's flushes (a run per partition touched, every
   ``segment_rows`` rows, cut at batch boundaries, the row floor of ``extend_partitions``) and
   the compaction policy itself (``compaction.plan`` on the simulated manifest, merging as a
   compactor that keeps up would, until no merge is left), on metadata only: which rows each
   final run holds, its id, tier, batch ranges and codec (zstd in the last tier and for a
   partition too small to be merged, the intermediate codec otherwise, as the writer and
   ``compaction.merge`` choose).
2. ``build`` draws the rows from ``bench.seeded_batches`` (the same generator, the same seed:
   the same rows, so queries have the same answers), gathers each run's rows, sorts them per
   ordering with the key ``schema.account_order`` uses, and writes them with
   ``files.write_parquet`` (the same writer settings, footer ids and digests); then commits the
   manifest.

What it skips, and why that is fair for query figures: the writer's tier-0 files and every
intermediate merge (their CPU and write amplification are what ``trove bench`` and
``benchmarks/trove_merge_cost`` measure), and the writer's time-driven flushes (a live writer also
flushes every ``flush_interval_s``, so its segment sizes, hence its run sizes and count, follow the
ingest rate: ``--segment-rows`` models that). The files a query reads are the files the policy
leaves, row for row.

Memory: a run's generated columns (``_STORED``, 32 bytes a row) and a 64-bit sort key a row, so
~2.7 GB for a 2^26-row run (``max_run_rows``); ``build`` refuses plans beyond ``memory_mb``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.trove import compaction, rollup
from engine.trove.bench import (
    BENCH_START_NS,
    QUERY_KINDS,
    bench_dir,
    seeded_batches,
    seeded_times_ns,
    time_queries,
)
from engine.trove.config import TroveConfig
from engine.trove.files import write_parquet
from engine.trove.manifest import Manifest, Segment, merge_ranges, save_manifest
from engine.trove.query import TroveReader
from engine.trove.retention import disk_bytes
from engine.trove.schema import COLUMNS, arrow_schema, extend_partitions, partition_of, partitions_of

#: Rows per seeded batch (one journal entry each): the writer path's ``bulk_load`` batch size.
BATCH_ROWS = 8_192
#: Columns a run keeps while it is gathered (the rest follow from the row's number: transfer_id,
#: timestamp_ns, batch_seq, batch_index, and code 0).
_STORED = ("payer", "payee", "amount_fen", "category", "operator", "device_id", "location_cell")
_STORED_DTYPE = np.dtype([(name, COLUMNS[name]) for name in _STORED])
assert _STORED_DTYPE.itemsize % 8 == 0
#: Bytes a row of a run holds while it is built: the stored columns (32) and the sort key (8).
_BUILD_BYTES_PER_ROW = 40
#: Rows gathered and handed to the Parquet writer at a time (rounded to whole row groups).
_WRITE_CHUNK_ROWS = 1 << 20


class PlannedRun(msgspec.Struct, frozen=True):
    """A run the policy leaves: its id and partition, the rows it holds (global row numbers of the
    seeded sequence, half-open ranges), and its manifest fields."""

    id: int
    partition: int
    ranges: list[tuple[int, int]]
    seq_ranges: list[tuple[int, int]]
    min_timestamp_ns: int
    max_timestamp_ns: int
    tier: int
    compression: str
    #: Never merged again (the writer's and ``compaction.plan_merge``'s verdict): zstd, and
    #: ``final_row_group_rows`` row groups.
    final: bool = True

    @property
    def rows(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)


class BuildPlan(msgspec.Struct, frozen=True):
    runs: list[PlannedRun]
    partition_starts: list[int]
    next_segment_id: int
    durable_through_seq: int
    #: Merges the policy made (what the direct build skips).
    merges: int
    rows_merged: int


class BuildResult(msgspec.Struct, frozen=True):
    rows: int
    accounts: int
    seed: int
    dir: str
    runs: int
    partitions: int
    #: The writer's flush size the plan assumed (a live writer's follow its ingest rate).
    segment_rows: int
    row_group_rows: int
    #: Everything the build left on disk (``retention.disk_bytes``: runs, rollups, manifest), as
    #: ``trove stats`` counts it; ``segment_bytes`` the runs alone.
    bytes_on_disk: int
    bytes_per_row: float
    build_s: float
    #: CPU of this process (all threads) for the build.
    build_cpu_s: float
    #: What the writer path would have done on top: merges and rows rewritten by them.
    merges_skipped: int
    rows_merged_skipped: int
    peak_rss_bytes: int
    #: Rows per row group of the final runs (what lookups read) and the runs' size cap.
    final_row_group_rows: int = 0
    max_run_rows: int = 0
    segment_bytes: int = 0


class _Replay:
    """The writer's flushes and the compactor's merges on metadata only: a manifest whose segments
    have no files, and the seeded rows (half-open ranges) and codec of each."""

    def __init__(self, accounts: int, config: TroveConfig, start_ns: int) -> None:
        self.config = config
        self.accounts = accounts
        self.start_ns = start_ns
        self.m = Manifest(trove_id="plan", partition_ns=config.partition_ns)
        self.ranges: dict[int, list[tuple[int, int]]] = {}
        self.codec: dict[int, str] = {}
        self.final: dict[int, bool] = {}
        self.merges = self.rows_merged = 0

    def _new_segment(self, **fields: Any) -> Segment:
        seg = Segment(id=self.m.next_segment_id, kind="run", files=[], **fields)
        self.m.next_segment_id += 1
        return seg

    def flush(self, lo: int, hi: int, seen_seq: int) -> None:
        """``Trove._write_segments`` for rows [lo, hi): a run per partition touched."""
        m, cfg = self.m, self.config
        first_new = m.durable_through_seq + 1
        ends = seeded_times_ns(np.array([lo, hi - 1], dtype=np.int64), self.accounts, self.start_ns)
        one_period = len(set(partition_of(ends, m.partition_ns).tolist())) == 1
        # Nearly every flush lies in one period: the partition rules (the row floor) depend on the
        # periods present, not on how many rows each has, so its first row stands for them all.
        ts = (
            ends[:1] if one_period else seeded_times_ns(np.arange(lo, hi, dtype=np.int64), self.accounts, self.start_ns)
        )
        periods = partition_of(ts, m.partition_ns)
        starts = m.partition_starts
        newest_rows = sum(s.rows for s in m.segments if starts and s.partition == starts[-1])
        starts = extend_partitions(starts, periods, newest_rows, cfg.partition_min_rows)
        parts = partitions_of(periods, starts)
        held: Counter[int] = Counter()
        for s in m.segments:
            held[s.partition] += s.rows
        pieces = [(int(parts[0]), lo, hi, int(ends[0]), int(ends[1]))] if one_period else []
        for part in [] if one_period else np.unique(parts).tolist():
            where = np.flatnonzero(parts == part)  # contiguous: times never decrease
            pieces.append((part, lo + int(where[0]), lo + int(where[-1]) + 1, int(ts[where[0]]), int(ts[where[-1]])))
        for part, a, b, t_first, t_last in pieces:
            seg = self._new_segment(
                partition=part,
                rows=b - a,
                min_timestamp_ns=t_first,
                max_timestamp_ns=t_last,
                seq_ranges=[(first_new, seen_seq)],
                tier=compaction.tier_of(b - a, cfg),
            )
            self.ranges[seg.id] = [(a, b)]
            final = held[part] < (cfg.fanin - 1) * cfg.segment_rows  # as the writer decides
            self.codec[seg.id] = "zstd" if final else cfg.intermediate_compression
            self.final[seg.id] = final
            m.segments.append(seg)
        m.partition_starts = starts
        m.durable_through_seq = seen_seq

    def merge_due(self, *, everything: bool = False) -> None:
        """``compaction.plan_merge``'s merges until none is left, on metadata: after a flush as a
        compactor that keeps up merges (``Trove.compact_due``), at the end with ``everything`` as
        the final flush does (``Trove.compact_all``: the newest partition closed too)."""
        m, cfg = self.m, self.config
        while step := compaction.plan_merge(m, cfg, everything=everything):
            sources, rows = step.sources, step.rows
            run = self._new_segment(
                partition=sources[0].partition,
                rows=rows,
                min_timestamp_ns=min(s.min_timestamp_ns for s in sources),
                max_timestamp_ns=max(s.max_timestamp_ns for s in sources),
                seq_ranges=merge_ranges([r for s in sources for r in s.seq_ranges]),
                tier=compaction.tier_of(rows, cfg),
            )
            inclusive = merge_ranges([(a, b - 1) for s in sources for a, b in self.ranges.pop(s.id)])
            self.ranges[run.id] = [(a, b + 1) for a, b in inclusive]
            self.codec[run.id] = "zstd" if step.final else cfg.intermediate_compression
            self.final[run.id] = step.final
            ids = {s.id for s in sources}
            m.segments = [s for s in m.segments if s.id not in ids] + [run]
            self.merges += 1
            self.rows_merged += rows


def plan_runs(rows: int, accounts: int, config: TroveConfig, *, start_ns: int = BENCH_START_NS) -> BuildPlan:
    """The runs the writer and a compactor that keeps up leave for ``rows`` seeded rows, when the
    writer flushes every ``config.segment_rows`` rows (at the first batch boundary past it)."""
    replay = _Replay(accounts, config, start_ns)
    lo = seq = 0
    while lo < rows:
        hi = lo
        while hi < rows and hi - lo < config.segment_rows:
            hi = min(hi + BATCH_ROWS, rows)
            seq += 1
        replay.flush(lo, hi, seq)
        replay.merge_due()
        lo = hi
    replay.merge_due(everything=True)
    m = replay.m
    runs = [
        PlannedRun(
            id=s.id,
            partition=s.partition,
            ranges=replay.ranges[s.id],
            seq_ranges=s.seq_ranges,
            min_timestamp_ns=s.min_timestamp_ns,
            max_timestamp_ns=s.max_timestamp_ns,
            tier=s.tier,
            compression=replay.codec[s.id],
            final=replay.final[s.id],
        )
        for s in m.segments
    ]
    return BuildPlan(
        runs=runs,
        partition_starts=m.partition_starts,
        next_segment_id=m.next_segment_id,
        durable_through_seq=m.durable_through_seq,
        merges=replay.merges,
        rows_merged=replay.rows_merged,
    )


class _RunBuffer:
    """One planned run's stored columns, filled as the seeded rows stream past. Row-major (one
    packed record a row), so the gather into sorted order touches one cache line a row, not one
    per column (numpy gathers plain 64-bit words far faster than records)."""

    def __init__(self, run: PlannedRun) -> None:
        self.run = run
        self.filled = 0
        self.rows = np.empty(run.rows, dtype=_STORED_DTYPE)
        #: The same bytes as rows of 64-bit words (numpy gathers those far faster than records).
        self.words = self.rows.view(np.uint64).reshape(run.rows, _STORED_DTYPE.itemsize // 8)
        self._starts = np.array([a for a, _ in run.ranges], dtype=np.int64)
        lengths = np.array([b - a for a, b in run.ranges], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    def fill(self, batch: np.ndarray) -> None:
        """Append seeded records (the run's next rows, in order)."""
        part = self.rows[self.filled : self.filled + len(batch)]
        for name in _STORED:
            part[name] = batch[name]
        self.filled += len(batch)

    def global_rows(self, positions: np.ndarray) -> np.ndarray:
        """The seeded row numbers of positions in this run (its ranges laid end to end)."""
        k = np.searchsorted(self._offsets, positions, side="right") - 1
        return self._starts[k] + (positions - self._offsets[k])

    def sort_positions(self, ordering: str) -> np.ndarray:
        """The run's positions in (``ordering``, time, batch_seq, batch_index) order. Rows are held
        in seeded (time and arrival) order, so the key is the one ``schema.account_order`` sorts:
        the account above the row's position, one sort of 64-bit keys (built a slice at a time,
        so no temporary the size of the run)."""
        n = len(self.rows)
        keys = np.empty(n, dtype=np.uint64)
        step = _WRITE_CHUNK_ROWS
        for a in range(0, n, step):
            b = min(a + step, n)
            keys[a:b] = self.rows[ordering][a:b]
            keys[a:b] <<= np.uint64(32)
            keys[a:b] |= np.arange(a, b, dtype=np.uint64)
        keys.sort()
        keys &= np.uint64(0xFFFF_FFFF)
        return keys


def _sorted_batches(buf: _RunBuffer, ordering: str, accounts: int, start_ns: int, group_rows: int) -> Any:
    """The run's rows sorted by ``ordering`` (``_RunBuffer.sort_positions``), as record batches of
    whole row groups, the columns a row's number decides derived from it as the generator sets them."""
    import pyarrow as pa

    keys = buf.sort_positions(ordering)
    schema = arrow_schema()
    chunk = max(group_rows, _WRITE_CHUNK_ROWS // group_rows * group_rows)
    for a in range(0, len(keys), chunk):
        pos = keys[a : a + chunk].astype(np.intp)
        g = buf.global_rows(pos)
        rows = np.take(buf.words, pos, axis=0).view(_STORED_DTYPE)[:, 0]  # a plain-integer gather: fast
        cols: dict[str, np.ndarray] = {name: np.ascontiguousarray(rows[name]) for name in _STORED}
        cols["transfer_id"] = g
        cols["timestamp_ns"] = seeded_times_ns(g, accounts, start_ns)
        cols["batch_seq"] = g // BATCH_ROWS + 1
        cols["batch_index"] = (g % BATCH_ROWS).astype(np.uint16)
        cols["code"] = np.zeros(len(g), dtype=np.uint8)
        yield pa.RecordBatch.from_arrays([pa.array(cols[f.name], type=f.type) for f in schema], schema=schema)


def _rollup_parts(buf: _RunBuffer, accounts: int, start_ns: int, config: TroveConfig) -> Any:
    """Rollups of the run's rows a chunk at a time (``rollup.rollup_of``), times and codes derived as
    ``_sorted_batches`` derives them: their sum is the run's rollup."""
    n = buf.run.rows
    for a in range(0, n, _WRITE_CHUNK_ROWS):
        rows = buf.rows[a : a + _WRITE_CHUNK_ROWS]
        g = buf.global_rows(np.arange(a, a + len(rows), dtype=np.int64))
        cols = {name: rows[name] for name in ("location_cell", "category", "operator", "amount_fen")}
        cols |= {"timestamp_ns": seeded_times_ns(g, accounts, start_ns), "code": np.zeros(len(g), dtype=np.uint8)}
        yield rollup.rollup_of(cols, config)


def build(
    directory: str | Path,
    *,
    rows: int,
    accounts: int,
    seed: int,
    config: TroveConfig | None = None,
    start_ns: int = BENCH_START_NS,
    threads: int = 1,
    memory_mb: int = 3_584,
) -> BuildResult:
    """Write the trove ``plan_runs`` describes for ``seeded_batches(rows, accounts, seed)`` into a
    new (or empty) ``directory``; the manifest is committed last, so a build cut short leaves no
    trove. ``threads`` 2 writes a run's two orderings side by side (pyarrow encodes without the
    GIL), at the price of a second sort key (8 bytes a row)."""
    if rows < 1 or accounts < 2:
        raise ValueError("trove build needs rows >= 1 and accounts >= 2")
    if threads not in (1, 2):
        raise ValueError(f"trove build writes one or two files at a time (threads 1 or 2), got {threads}")
    root = Path(directory)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty: trove build writes a new trove; give a new or empty directory")
    cfg = msgspec.structs.replace(config or TroveConfig(), dir=str(root))
    t0, cpu0 = time.perf_counter(), time.process_time()
    plan = plan_runs(rows, accounts, cfg, start_ns=start_ns)
    biggest = max(r.rows for r in plan.runs)
    need = biggest * (_BUILD_BYTES_PER_ROW + 8 * (threads - 1))
    if need > memory_mb << 20:
        raise ValueError(
            f"the largest run holds {biggest:,} rows: building it takes ~{need / 2**20:,.0f} MB, over memory_mb "
            f"{memory_mb:,} (lower max_run_rows, or raise memory_mb)"
        )
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if rows * 60 > free:  # ~54 bytes a row with both orderings, zstd
        raise ValueError(f"{root} has {free / 1e9:.1f} GB free; {rows:,} rows take ~{rows * 60 / 1e9:.1f} GB")
    trove_id = uuid.uuid4().hex
    schema = arrow_schema()
    bounds = sorted((a, b, run.id) for run in plan.runs for a, b in run.ranges)
    by_id = {run.id: run for run in plan.runs}
    open_runs: dict[int, _RunBuffer] = {}
    segments: list[Segment] = []
    tile = 0
    done = 0
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None

    def write(buf: _RunBuffer) -> Segment:
        run = buf.run
        group_rows = cfg.file_row_group_rows(final=run.final)

        def one(ordering: str) -> Any:
            entry, n = write_parquet(
                root,
                f"runs/p{run.partition}/r{run.id:08d}.{ordering}.parquet",
                ordering,
                _sorted_batches(buf, ordering, accounts, start_ns, group_rows),
                schema,
                trove_id=trove_id,
                segment_id=run.id,
                row_group_rows=group_rows,
                compression=run.compression,
                whole_digest=run.final,
            )
            if n != run.rows:
                raise RuntimeError(f"run {run.id}: wrote {n} rows, planned {run.rows}")
            return entry

        files = list(pool.map(one, compaction.ORDERINGS)) if pool else [one(o) for o in compaction.ORDERINGS]
        rollup.write_rollup(root, files[0], _rollup_parts(buf, accounts, start_ns, cfg), cfg)  # as the writer
        return Segment(
            id=run.id,
            kind="run",
            partition=run.partition,
            rows=run.rows,
            min_timestamp_ns=run.min_timestamp_ns,
            max_timestamp_ns=run.max_timestamp_ns,
            seq_ranges=run.seq_ranges,
            files=files,
            tier=run.tier,
        )

    try:
        for batch in seeded_batches(rows, accounts, seed, batch_rows=BATCH_ROWS, start_ns=start_ns):
            end = done + len(batch)
            while tile < len(bounds) and bounds[tile][0] < end:
                a, b, run_id = bounds[tile]
                lo, hi = max(a, done), min(b, end)
                buf = open_runs.get(run_id)
                if buf is None:
                    buf = open_runs[run_id] = _RunBuffer(by_id[run_id])
                buf.fill(batch[lo - done : hi - done])
                if buf.filled == buf.run.rows:
                    segments.append(write(open_runs.pop(run_id)))
                if b > end:
                    break  # this range goes on in the next batch
                tile += 1
            done = end
    finally:
        if pool is not None:
            pool.shutdown()
    if open_runs or len(segments) != len(plan.runs):
        raise RuntimeError(f"trove build: {len(open_runs)} runs left unfilled; the plan and the rows disagree")
    order = {run.id: i for i, run in enumerate(plan.runs)}
    manifest = Manifest(
        trove_id=trove_id,
        partition_ns=cfg.partition_ns,
        next_segment_id=plan.next_segment_id,
        durable_through_seq=plan.durable_through_seq,
        segments=sorted(segments, key=lambda s: order[s.id]),
        partition_starts=plan.partition_starts,
    )
    save_manifest(root, manifest)
    segment_bytes = sum(s.bytes for s in manifest.segments)
    size = disk_bytes(root, segment_bytes)["bytes_on_disk"]
    return BuildResult(
        rows=manifest.rows,
        accounts=accounts,
        seed=seed,
        dir=str(root),
        runs=len(manifest.segments),
        partitions=len({s.partition for s in manifest.segments}),
        segment_rows=cfg.segment_rows,
        row_group_rows=cfg.row_group_rows,
        bytes_on_disk=size,
        bytes_per_row=size / manifest.rows,
        build_s=time.perf_counter() - t0,
        build_cpu_s=time.process_time() - cpu0,
        merges_skipped=plan.merges,
        rows_merged_skipped=plan.rows_merged,
        peak_rss_bytes=_peak_rss_bytes(),
        final_row_group_rows=cfg.file_row_group_rows(final=True),
        max_run_rows=cfg.max_run_rows,
        segment_bytes=segment_bytes,
    )


def _peak_rss_bytes() -> int:
    """This process's peak resident set (``VmHWM``), 0 where /proc is not there."""
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class DirectBenchResult(msgspec.Struct, frozen=True):
    build: BuildResult
    #: Query kind -> {"p50_ms", "p99_ms", "mean_rows", "queries"} (``bench.time_queries``).
    queries: dict[str, dict[str, float]]


def bench_direct(
    *,
    rows: int,
    accounts: int,
    seed: int,
    queries: int,
    directory: str = "",
    config: TroveConfig | None = None,
    threads: int = 1,
    kinds: tuple[str, ...] = QUERY_KINDS,
) -> DirectBenchResult:
    """``trove bench --direct``: ``build`` a trove (in a temporary directory if ""), then time each
    query kind as ``trove bench`` does, from a reader of the directory."""
    with bench_dir(directory, "cbdc-trove-build-") as root:
        built = build(root, rows=rows, accounts=accounts, seed=seed, config=config, threads=threads)
        timings = time_queries(TroveReader.open(root), accounts, seed, queries, kinds=kinds)
    return DirectBenchResult(build=built, queries=timings)
