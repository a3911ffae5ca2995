"""Compaction: runs sorted by account, merged size-tiered.

The writer writes every segment as a tier-0 *run*, sorted in memory (``Trove._write_run``).
Each run is two files holding the same rows, one sorted by (payer, time) and one by (payee,
time), so "payments sent by N" and "payments received by N" each read the one or two row groups
(``row_group_rows`` rows) of each run whose min/max statistics contain N. The second ordering
doubles the bytes: that is the disk cost of answering "received" without a scan (a payer-sorted
trove alone makes it a full scan, ~2.7 s at 10^9 rows).

Merging is size-tiered (as Cassandra's STCS or an LSM tree): ``fanin`` runs of one tier (runs
within a factor of ``fanin`` in size, ``tier_of``) merge into one run of a higher tier, and a run
of ``max_run_rows`` or more is never rewritten, so a row is merged at most once per tier
(log_fanin(max_run_rows / segment size)) and a large base is never rewritten wholesale. A merge
of runs is a streaming k-way merge in numpy (``merged_runs``), on the compactor's thread so its
CPU clock sees all of the work; pyarrow writes the files (the intermediate codec below the last tier, zstd in it).
Arrival-ordered "ingest" segments, which earlier versions wrote, are sorted in memory or, when
large, by DuckDB (out of core past its memory limit, one thread).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from engine.trove.config import TroveConfig
from engine.trove.files import CorruptSegment, check_file, write_parquet
from engine.trove.manifest import FileEntry, Manifest, Segment, merge_ranges
from engine.trove.schema import COLUMNS, ROW_BYTES, account_order, arrow_schema, concat_rows, take_rows

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

#: The two account orderings of a run, and the sort key of each.
ORDERINGS = {
    "payer": "payer, timestamp_ns, batch_seq, batch_index",
    "payee": "payee, timestamp_ns, batch_seq, batch_index",
}


def tier_of(rows: int, config: TroveConfig) -> int:
    """0 below ``fanin`` row groups' worth of rows, then one tier per factor of ``fanin``.

    Runs of one tier are within a factor of ``fanin`` in size, so ``fanin`` of them merge into a
    run of a higher tier: every merge lifts its rows at least one tier, and a row is merged at most
    once per tier, whatever size the writer's segments are. (Counting tiers from ``segment_rows``,
    as before, put every segment smaller than that, the 1-second flushes below 2^20 payments/s,
    in tier 0 until ``fanin`` segments' worth, where the first merged run was merged again with
    each next batch of segments: 24 merges per row for 25,000-row segments at fanin 8, against 3.)
    """
    tier, size = 0, config.row_group_rows * config.fanin
    while rows >= size:
        tier += 1
        size *= config.fanin
    return tier


class MergePlan(msgspec.Struct, frozen=True):
    """The next merge: its sources, and whether its output is final (zstd: no merge the policy
    plans will read it again, or its partition is closed), else in the intermediate codec."""

    sources: list[Segment]
    final: bool

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.sources)


def plan(manifest: Manifest, config: TroveConfig, *, everything: bool = False) -> list[Segment]:
    """The sources of the next merge (``plan_merge``; empty: nothing to do)."""
    step = plan_merge(manifest, config, everything=everything)
    return step.sources if step is not None else []


def plan_merge(manifest: Manifest, config: TroveConfig, *, everything: bool = False) -> MergePlan | None:
    """The next merge (None: nothing to do), oldest partition first.

    * A partition's ingest segments (older versions') are merged once there are ``fanin`` of
      them, once a newer partition exists (the partition is closed), or when ``everything``.
    * Runs of one tier merge ``fanin`` at a time (the smallest first) while the result stays
      within ``max_run_rows``; when fewer than ``fanin`` of them fit in ``max_run_rows`` (runs
      larger than ``max_run_rows / fanin``, which the writer's 1-second runs at some rates make:
      8 runs of 19.4M from 300,000-row flushes, before), as many as fit, once no other run of
      that size would fit too; and where ``fanin`` runs would make a run that no merge takes,
      up to ``2 fanin`` of them (``merge_width``).
    * A closed partition (a newer one exists, or ``everything``: the final flush) that holds
      ``fanin`` or more runs below ``max_run_rows`` merges them, the smallest first, as many as
      fit in ``max_run_rows`` (up to ``CLOSING_MAX_SOURCES``), whatever their tiers, once no tier
      merge is due (a compactor that lags may group runs otherwise, but leaves the same bounds:
      fewer than ``fanin`` runs below ``max_run_rows`` in a closed partition): the up to
      ``fanin - 1`` runs per tier that a size-tiered policy leaves for ever (25 of the 38 runs at
      10^9 rows) become one run, in zstd. A partition of fewer runs is left as it is (a small
      day's two 1-second runs are not rewritten to save one file).
    """
    by_partition: dict[int, list[Segment]] = defaultdict(list)
    for s in manifest.segments:
        by_partition[s.partition].append(s)
    if not by_partition:
        return None
    newest = max(by_partition)
    cap = config.max_run_rows
    for part in sorted(by_partition):
        segs = by_partition[part]
        closed = part != newest or everything
        ingest = [s for s in segs if s.kind == "ingest"]
        if ingest and (len(ingest) >= config.fanin or closed):
            chosen = _fitting(ingest, cap, len(ingest))
            return MergePlan(chosen, final=is_last_tier(sum(s.rows for s in chosen), config))
        runs = sorted((s for s in segs if s.kind == "run" and s.rows < cap), key=lambda s: s.rows)
        tiers: dict[int, list[Segment]] = defaultdict(list)
        for s in runs:
            tiers[tier_of(s.rows, config)].append(s)  # not s.tier: older troves counted otherwise
        for tier in sorted(tiers):
            width = merge_width(tiers[tier][0].rows, config)
            chosen = _fitting(tiers[tier], cap, width)
            rows = sum(s.rows for s in chosen)
            if len(chosen) == width or (len(chosen) >= 2 and rows + chosen[0].rows > cap):
                return MergePlan(chosen, final=is_last_tier(rows, config))
        if closed and len(runs) >= config.fanin:  # after the tier merges: the same runs however late
            chosen = _fitting(runs, cap, CLOSING_MAX_SOURCES)
            if len(chosen) >= 2:
                return MergePlan(chosen, final=True)
    return None


def merge_width(rows: int, config: TroveConfig) -> int:
    """How many runs of ``rows`` rows a tier merge takes: ``fanin``, or, where ``fanin`` of them
    would make a run that can never be merged again (``fanin`` of it pass ``max_run_rows``), as
    many as fit in ``max_run_rows``, up to ``2 fanin``: the writer's 500,000-row runs (1-second
    runs at 500,000/s) then end in 64M-row runs, 16 runs of 4M merged, instead of 32M-row runs
    that no merge takes (merges per row unchanged, 2; up to 15 runs of that tier wait, not 7)."""
    if rows * config.fanin * config.fanin > config.max_run_rows:
        return max(config.fanin, min(config.max_run_rows // max(rows, 1), 2 * config.fanin))
    return config.fanin


#: Sources a closed partition's merge of its leftover runs takes at most (its read-ahead per
#: source shrinks past ``fanin`` sources, so its memory stays that of a ``fanin``-way merge).
CLOSING_MAX_SOURCES = 32


def _fitting(segments: list[Segment], cap: int, limit: int) -> list[Segment]:
    """The leading ``segments`` (at most ``limit``) whose rows sum to at most ``cap`` (at least one)."""
    chosen: list[Segment] = []
    rows = 0
    for s in segments[:limit]:
        if chosen and rows + s.rows > cap:
            break
        chosen.append(s)
        rows += s.rows
    return chosen


def merge_debt(manifest: Manifest, config: TroveConfig) -> tuple[int, int]:
    """(rows, merges): what the merges the policy calls for now would rewrite, with the merges
    those would make due in turn, until none is left: the compaction backlog. A compactor that
    keeps up holds it below about one merge; one that falls behind sees it grow with the run."""
    if not config.compact:
        return 0, 0
    sim = Manifest(trove_id=manifest.trove_id, partition_ns=manifest.partition_ns, segments=list(manifest.segments))
    rows = merges = 0
    while sources := plan(sim, config):
        out = sum(s.rows for s in sources)
        rows += out
        merges += 1
        ids = {s.id for s in sources}
        first = sources[0]
        merged = Segment(-merges, "run", first.partition, out, first.min_timestamp_ns, first.max_timestamp_ns, [], [])
        sim.segments = [s for s in sim.segments if s.id not in ids] + [merged]
    return rows, merges


def is_last_tier(rows: int, config: TroveConfig) -> bool:
    """Whether a run of ``rows`` rows can no longer be part of a tier merge the policy plans (two
    runs of its size would pass ``max_run_rows``; ``plan_merge`` merges as many as fit): its files
    are written in zstd."""
    return rows * 2 > config.max_run_rows


def merge(
    root: Path,
    sources: list[Segment],
    segment_id: int,
    trove_id: str,
    config: TroveConfig,
    *,
    duckdb_connection: Callable[[], duckdb.DuckDBPyConnection],
    stopping: Callable[[], bool] = lambda: False,
    final: bool | None = None,
) -> Segment:
    """Write the rows of ``sources`` as one run (both orderings); the sources are left in place.

    Runs are merged by streaming (``merged_runs``: a k-way merge in numpy, memory bounded by
    the sources' read-ahead); arrival-ordered segments that fit in ``compaction_memory_mb`` are
    read once and sorted in memory into both orderings; anything else (a very large merge of
    arrival-ordered segments) is sorted by DuckDB, out of core. ``stopping`` is polled between
    steps: when it says so the merge raises ``MergeStopped`` and writes nothing. ``final``
    (``MergePlan.final``; None: ``is_last_tier`` of the output) writes zstd, else the
    intermediate codec.
    """
    schema = arrow_schema()
    part = sources[0].partition
    expected = sum(s.rows for s in sources)
    if final is None:
        final = is_last_tier(expected, config)
    check_sources(root, sources, trove_id)
    orderings: dict[str, Iterable[pa.RecordBatch]]
    if all(s.kind == "run" for s in sources):
        orderings = {o: merged_runs(root, sources, o, config, stopping) for o in ORDERINGS}
    elif all(s.kind == "ingest" for s in sources) and _fits_in_memory(expected, config):
        cols = _read_arrival(root, sources)
        orderings = {o: _sorted_in_memory(cols, o, config.row_group_rows) for o in ORDERINGS}
    else:
        orderings = {o: _duckdb_sorted(duckdb_connection(), root, sources, o, config) for o in ORDERINGS}
    files: list[FileEntry] = []
    rows = 0
    try:
        for ordering, batches in orderings.items():
            entry, rows = _write_ordering(root, part, segment_id, ordering, batches, schema, trove_id, config, final)
            files.append(entry)
            if rows != expected:
                raise RuntimeError(
                    f"compaction of segments {[s.id for s in sources]} wrote {rows} rows, expected {expected}"
                )
    except BaseException:
        for f in files:  # a merge that fails writes nothing: not one ordering's file without the other
            (root / f.path).unlink(missing_ok=True)
        raise
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


def _write_ordering(
    root: Path,
    part: int,
    segment_id: int,
    ordering: str,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    trove_id: str,
    config: TroveConfig,
    final: bool,
) -> tuple[FileEntry, int]:
    """One ordering's file of a merged run (zstd and a whole-file digest if ``final``)."""
    return write_parquet(
        root,
        f"runs/p{part}/r{segment_id:08d}.{ordering}.parquet",
        ordering,
        (b if b.schema.equals(schema) else b.cast(schema) for b in batches),
        schema,
        trove_id=trove_id,
        segment_id=segment_id,
        row_group_rows=config.file_row_group_rows(final=final),
        compression="zstd" if final else config.intermediate_compression,
        whole_digest=final,
    )


def check_sources(root: Path, sources: list[Segment], trove_id: str) -> None:
    """Before a merge reads them: every file of ``sources`` is this trove's and that segment's, of
    the size and rows recorded (``files.check_file``), and an intermediate file's footer is the one
    written (``FileEntry.footer_sha256``: ``check_file`` compares it on every check); else
    CorruptSegment naming the file. (Their pages' CRCs are verified as the merge reads them:
    ``_RunReader``.)"""
    for s in sources:
        for f in s.files:
            check_file(root, f, trove_id=trove_id, segment_id=s.id, rows=s.rows, deep=False)


class MergeStopped(RuntimeError):
    """The trove is closing: a merge stopped between two steps (its partial output is removed)."""


#: Bytes per row an in-memory sort of arrival-ordered rows holds at its peak (the columns, one
#: ordering taken from them, the permutation and Arrow's view): bounds what it takes on.
_SORT_BYTES_PER_ROW = 3 * ROW_BYTES
#: Rows read from each source run per step of a streaming merge.
MERGE_READ_ROWS = 1 << 16


def _fits_in_memory(rows: int, config: TroveConfig) -> bool:
    return rows * _SORT_BYTES_PER_ROW <= config.compaction_memory_mb << 20


def _columns(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    return {name: batch.column(name).to_numpy() for name in COLUMNS}


def _read_arrival(root: Path, sources: list[Segment]) -> dict[str, np.ndarray]:
    """The rows of arrival-ordered segments, in arrival ((batch_seq, batch_index)) order."""
    import pyarrow.parquet as pq

    by_seq = sorted(sources, key=lambda s: (s.seq_ranges[0] if s.seq_ranges else (0, 0), s.id))
    tables = [pq.read_table(root / s.files[0].path, use_threads=False) for s in by_seq]
    cols = concat_rows([_columns(b) for t in tables for b in t.to_batches()])
    arrival = (cols["batch_seq"].astype(np.uint64) << np.uint64(16)) | cols["batch_index"]
    if len(arrival) > 1 and (np.diff(arrival.view(np.int64)) < 0).any():  # rebuilt rows, interleaved ranges
        cols = take_rows(cols, np.argsort(arrival, kind="stable"))
    return cols


def _sorted_in_memory(cols: dict[str, np.ndarray], ordering: str, group_rows: int) -> Iterator[pa.RecordBatch]:
    """Rows in arrival order, sorted by ``ordering`` (taken when the writer gets to this ordering)."""
    yield from _regrouped([take_rows(cols, account_order(cols[ordering], cols["timestamp_ns"]))], group_rows)


def _time_ordered(sources: list[Segment]) -> list[Segment]:
    """The sources by (first time, first batch)."""
    return sorted(sources, key=lambda s: (s.min_timestamp_ns, s.seq_ranges[0] if s.seq_ranges else (0, 0), s.id))


def _disjoint(sources: list[Segment]) -> bool:
    """Whether every row of each source (in ``_time_ordered`` order) comes before every row of
    the next in (time, batch_seq) order: then a stable sort on the account alone of their
    concatenation is the (account, time, batch_seq, batch_index) order."""
    for a, b in itertools.pairwise(sources):
        if not a.seq_ranges or not b.seq_ranges:
            return False
        if a.max_timestamp_ns > b.min_timestamp_ns:
            return False
        if a.max_timestamp_ns == b.min_timestamp_ns and a.seq_ranges[-1][1] >= b.seq_ranges[0][0]:
            return False
    return True


#: Whether a merge verifies its sources' page CRC-32s as it reads them (``_RunReader``).
VERIFY_PAGES = True


class _RunReader:
    """One source run's file read ahead in batches: ``cols`` holds rows read and not yet merged.

    Every page's CRC-32 is verified as it is read (the file itself was checked before the merge
    began: ``check_sources``): a damaged page fails the merge with a CorruptSegment naming the file."""

    def __init__(self, root: Path, source: Segment, ordering: str, read_rows: int) -> None:
        import pyarrow.parquet as pq

        self.path = root / source.file(ordering).path
        self.key = ordering
        self._batches = pq.ParquetFile(self.path, page_checksum_verification=VERIFY_PAGES).iter_batches(
            batch_size=read_rows, use_threads=False
        )
        self.cols: dict[str, np.ndarray] = {name: np.empty(0, dtype=dtype) for name, dtype in COLUMNS.items()}
        self._next: dict[str, np.ndarray] | None = self._read()

    def _read(self) -> dict[str, np.ndarray] | None:
        try:
            for batch in self._batches:
                if batch.num_rows:
                    return _columns(batch)
        except OSError as exc:  # a page's CRC (pyarrow: "CRC checksum verification failed"), a short read
            raise CorruptSegment(f"trove file {self.path} could not be merged: {exc}", path=self.path) from None
        return None

    @property
    def exhausted(self) -> bool:
        """Nothing beyond ``cols`` is left to read."""
        return self._next is None

    def read_more(self) -> None:
        """Append the next batch to ``cols``."""
        if self._next is not None:
            self.cols = concat_rows([self.cols, self._next]) if len(self.cols[self.key]) else self._next
            self._next = self._read()

    def take_below(self, bound: int | None) -> dict[str, np.ndarray]:
        """Remove and return the rows whose account is below ``bound`` (all of them if None)."""
        n = len(self.cols[self.key]) if bound is None else int(np.searchsorted(self.cols[self.key], bound))
        head = {name: col[:n] for name, col in self.cols.items()}
        self.cols = {name: col[n:] for name, col in self.cols.items()}
        return head


def merged_runs(
    root: Path,
    sources: list[Segment],
    ordering: str,
    config: TroveConfig,
    stopping: Callable[[], bool],
) -> Iterator[pa.RecordBatch]:
    """The rows of runs, each sorted by (``ordering``, time, batch_seq, batch_index), merged into
    that order: a streaming k-way merge whose memory is a few read-ahead batches per source.

    Each step takes, from every source, the rows whose account is below the smallest last account
    any source still reading has in memory (so every row of those accounts, in every source, is in
    the step), concatenates them in time order of the sources and sorts them stably by account:
    numpy's stable sort (timsort) finds the sources' sorted runs and merges them, O(n log k). Runs
    of one tier cover consecutive times (``_disjoint``), so that is the full order; when they do
    not (rows rebuilt from the journal, clocks out of order), each step is checked and, where
    needed, sorted on the whole key.
    """
    ordered = _time_ordered(sources)
    check = not _disjoint(ordered)
    # Past fanin sources (a closed partition's leftovers), less read-ahead each: the same memory.
    read_rows = max(MERGE_READ_ROWS * config.fanin // max(len(ordered), config.fanin), 1)
    readers = [_RunReader(root, s, ordering, read_rows) for s in ordered]

    def step_rows() -> Iterator[dict[str, np.ndarray]]:
        while True:
            if stopping():
                raise MergeStopped("the trove is closing")
            for r in readers:
                while not len(r.cols[ordering]) and not r.exhausted:
                    r.read_more()
            reading = [r for r in readers if not r.exhausted]
            bound = min(int(r.cols[ordering][-1]) for r in reading) if reading else None
            parts = [r.take_below(bound) for r in readers]
            if not any(len(p[ordering]) for p in parts):
                if bound is None:
                    return
                for r in reading:  # one account fills a whole read-ahead: read further
                    if int(r.cols[ordering][-1]) == bound:
                        r.read_more()
                continue
            cols = concat_rows([p for p in parts if len(p[ordering])])
            yield take_rows(cols, _step_order(cols, ordering, check=check))

    yield from _regrouped(step_rows(), config.row_group_rows)


def _step_order(cols: dict[str, np.ndarray], ordering: str, *, check: bool) -> np.ndarray:
    """The permutation that sorts one merge step by (account, time, batch_seq, batch_index)."""
    order = np.argsort(cols[ordering], kind="stable")
    if not check:
        return order
    account, ts = cols[ordering][order], cols["timestamp_ns"][order]
    seq, index = cols["batch_seq"][order], cols["batch_index"][order]
    same = account[1:] == account[:-1]
    later = (ts[1:] > ts[:-1]) | (
        (ts[1:] == ts[:-1]) & ((seq[1:] > seq[:-1]) | ((seq[1:] == seq[:-1]) & (index[1:] >= index[:-1])))
    )
    if (same & ~later).any():
        return np.lexsort((cols["batch_index"], cols["batch_seq"], cols["timestamp_ns"], cols[ordering]))
    return order


def _regrouped(chunks: Iterable[dict[str, np.ndarray]], group_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of whole row groups (a multiple of ``group_rows`` rows, the last one excepted),
    so that the file's row groups are full however the merge's steps were cut."""
    import pyarrow as pa

    schema = arrow_schema()

    def batch(cols: dict[str, np.ndarray]) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array(cols[name]) for name in schema.names], schema=schema)

    # A chunk is not copied to join the rows carried over from the last (a merge step's rows, every
    # column, were copied a third time so): the carry and the chunk's head make one group, the
    # chunk's whole groups after it are a view, and the rest (less than a group) is copied over.
    carry: dict[str, np.ndarray] | None = None
    for chunk in chunks:
        n = len(chunk["payer"])
        start = 0
        if carry is not None:
            start = min(group_rows - len(carry["payer"]), n)
            carry = concat_rows([carry, {name: col[:start] for name, col in chunk.items()}])
            if len(carry["payer"]) < group_rows:
                continue
            yield batch(carry)
            carry = None
        whole = start + (n - start) // group_rows * group_rows
        if whole > start:
            yield batch({name: col[start:whole] for name, col in chunk.items()})
        if whole < n:
            carry = {name: col[whole:].copy() for name, col in chunk.items()}
    if carry is not None:
        yield batch(carry)


def _duckdb_sorted(
    con: duckdb.DuckDBPyConnection, root: Path, sources: list[Segment], ordering: str, config: TroveConfig
) -> Iterator[pa.RecordBatch]:
    """The rows of ``sources`` sorted by DuckDB (out of core past its memory limit)."""
    paths = [str(root / s.file(ordering).path) for s in sources]
    sql = f"SELECT * FROM read_parquet($paths) ORDER BY {ORDERINGS[ordering]}"
    # A generator: the query starts when the file is written (one open result per connection).
    yield from con.sql(sql, params={"paths": paths}).to_arrow_reader(config.row_group_rows * 8)


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
