"""The trove's configuration (the ``[hooks.surveillance_log.trove]`` table of a scenario)."""

from __future__ import annotations

import msgspec

from engine.simtime import NS_PER_DAY, NS_PER_SECOND

#: Parquet codecs a trove file may use (pyarrow's names).
CODECS = ("zstd", "lz4", "snappy", "none")


class TroveConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the trove lives, how it is cut into files, and how much disk it may use.

    Sizes are chosen for a 2-core, 24 GiB machine: a memtable of 2**22 rows is ~250 MB of columns
    (two while one is written, ~0.8 GB at the peak of a flush); a merge holds a few read-ahead
    batches per source (DuckDB, for old troves' arrival-ordered segments, at most
    ``compaction_memory_mb``), so compaction never needs memory in proportion to the trove.

    The trove child's whole-life CPU per row (its writer in both orderings, the flush, every merge
    up to the final run: ``steady_ns_per_row`` of ``python -m benchmarks.trove_merge_cost --rows
    8e6``), old and new code alternated, 5 runs each (shared machine, 2026-12-04): 1,585-1,818
    -> 1,363-1,628 ns a row (0.84-0.94x a pair; medians 1,703 -> 1,543, 0.91x) from the files' encoding
    (``engine.trove.files``: required columns, min/max statistics on the time and the accounts
    only, delta encoding and no zstd on a file's own account, none on the dictionary columns) and
    a merge's row groups cut without copying each step again (``compaction._regrouped``). In one
    process, the old options patched back in and out, alternated, 6 rounds (a throwaway script,
    not kept; 2^21-row memtable, 8 runs of 2^18 merged): the writer 0.81x,
    a final merge 0.84x, writer + final merge 1,399 -> 1,157 ns a row. Bytes: final runs 53.71
    -> 53.49 B/row over 10^9 accounts; a 2*10^7-row ``trove build`` over as many accounts 50.89
    -> 51.08 B/row (its own account outside zstd, +0.04-0.07 B/row a file).

    Then (tc3, same command, main at 0a3f17f and this branch alternated, 3 runs each per
    session, shared machine at load 2-5, 2026-12-04): medians 1,614 -> 1,336 and 1,452 -> 1,226
    ns a row (0.83x, 0.84x; pairs 0.65-0.94x) before intermediate files were written by pyarrow
    itself, 1,501 -> 1,210 after (0.81x; pairs 0.78-0.82x); the last-tier merge 656-703 ->
    582-615 ns a row merged, the writer's memtable 765-845 -> 513-621 (that session); final runs
    53.27 -> 50.61 B/row, a 2*10^7-row ``trove build`` 51.08 -> 47.71 B/row. From: byte-stream
    split for the final files' unsorted columns (``files.column_encodings``: ~0.75x their
    encoding's CPU, fewer bytes), intermediate files without a whole-file SHA-256 (their footer's,
    and their pages' CRCs verified when merged; ~20 ns a row net) written by pyarrow itself (~28
    ns a row: ``files`` docstring), and pyarrow's buffers in glibc's arena
    (``process.child_malloc_env``: no page faults per flush or merge, a few percent). A person's
    day reads the same row groups, at less CPU (``files.column_encodings``).
    Where the CPU still goes (cProfile on the thread's CPU clock, steady memtables, before the
    native writes): the writer's ~600 ns a row is ~160 writing its two plain files into the page
    cache (kernel), ~125 the two ``take``s, ~120 the two sorts, ~100 Parquet's plain encoding
    (with page CRCs), ~40 the rollup; a final merge's ~650, ~60% encoding zstd files in
    4,096-row groups (a zstd context per page: row groups are what lookups read, so not larger),
    the rest reading, merging (concatenate, stable argsort, take: ~85) and writing.
    """

    #: Directory of the trove; "" = a temporary directory deleted when the hook closes (tests,
    #: quick runs: the cost is measured, the data is not kept).
    dir: str = ""
    #: Time period on the simulated clock; a partition (what retention expires) is one period or,
    #: below the row floor, several.
    partition_s: int = 86_400
    #: Row floor: a new partition starts only once the newest holds this many rows (a small
    #: ledger's days last seconds; without a floor each would be a partition of tiny files).
    partition_min_rows: int = 1 << 18
    #: The writer writes a segment (a tier-0 run) when this many rows are buffered, or after
    #: ``flush_interval_s``: its memtable. 2^22 rows (8 s at 500,000/s) start runs two tiers up,
    #: so they merge once, 16 into a 2^26-row run, instead of twice (1-second runs: 2 merges per
    #: row): ~1.3x less steady CPU per row (``benchmarks.trove_merge_cost``). A flusher thread
    #: writes it while the writer fills the next (double-buffered), so the flush no longer stalls
    #: ingest; the price is ~0.5 GB of two memtables in the child and a payment reaching the
    #: trove up to ``flush_interval_s`` after the ledger (the journal holds it meanwhile).
    segment_rows: int = 1 << 22
    flush_interval_s: float = 10.0
    #: Write and compact in a child process (``engine.trove.process``), so that Parquet encoding
    #: and sorting do not compete with the sequencer for the GIL; False runs them as threads of
    #: this process (tests of the store, the bulk loader).
    process: bool = True
    #: process mode: the child's niceness (0-19): it yields the CPU to the sequencer on a busy machine.
    process_nice: int = 10
    #: process mode: shared-memory slots of 8192 records (~400 KB each) between the sequencer and
    #: the child. With ``queue_batches`` this bounds the backlog; past it the sequencer waits.
    ring_slots: int = 64
    #: Batches the writer's queue holds before the hand-over waits for it (back-pressure, never drops).
    queue_batches: int = 256
    #: Rows per Parquet row group in compacted (account-sorted) files: the unit a lookup reads.
    row_group_rows: int = 16_384
    #: Rows per row group in final runs (zstd: never merged again, what queries read for good);
    #: 0 = ``row_group_rows``. A person's-day lookup reads one candidate group's account column in
    #: every file of the window and whole groups where the person is (``TroveReader.payments``):
    #: 4,096 against 16,384 decodes a quarter of the rows. Measured at 10^8 rows, 38 files a
    #: lookup, shared machine, page cache emptied per round: 21 -> 14-16 ms CPU and p50 35 ->
    #: 17-21 ms (with the reader's no-pre-buffer reads). The price: 1.3% more bytes on disk
    #: (55.6 -> 56.3 B/row) and 4x the row groups in a reader's parsed footers (pyarrow keeps
    #: ~10.7 KB a row group of 12 columns: ~1.3 -> ~5.2 GB for both orderings of 10^9 rows).
    final_row_group_rows: int = 4_096
    compact: bool = True
    #: Size-tiered merging: ``fanin`` runs of one tier merge into one of the next; runs reaching
    #: ``max_run_rows`` are never rewritten again (no wholesale rewrite of a large base).
    #: 8, not 4: each row is rewritten once per tier, and from 2^19-2^20-row segments to 2^26-row
    #: runs that is 2 merges per row at fanin 8 against 3 at fanin 4 (a query reads up to 7 runs
    #: per tier instead of 3: one row group each).
    fanin: int = 8
    max_run_rows: int = 1 << 26
    #: DuckDB's memory for the merges it does (see ``compaction``), and the bound on the rows a
    #: merge of arrival-ordered segments sorts in memory with numpy.
    compaction_memory_mb: int = 1_024
    #: Codec of the files a merge will read again (arrival-ordered segments, runs below the last
    #: tier): a cheaper one than zstd saves CPU twice per row and tier (writing and reading) for
    #: more bytes on disk while they live; final runs (the last tier, a closed partition's, and
    #: the writer's runs of a partition too small to be merged) are always zstd, so a row is
    #: zstd-encoded once per ordering. One of zstd, lz4, snappy, none ("none", the default: plain
    #: encoding, no codec: ~8-10% less steady CPU than lz4 for 1.6-2x the bytes while they live).
    intermediate_compression: str = "none"
    #: Retention (0 = off): expire the oldest partitions beyond this many bytes on disk, or older
    #: than this many simulated seconds behind the newest payment.
    max_bytes: int = 0
    max_age_s: int = 0
    #: Free space the trove leaves on its filesystem (for the journal and everything else):
    #: ingest stops, loudly, rather than go below it.
    reserve_free_bytes: int = 1 << 30
    #: Location cells per region and regions, for the region aggregates (as the privacy hook).
    regions: int = 64
    cells_per_region: int = 1 << 14

    def __post_init__(self) -> None:
        day_s = NS_PER_DAY // NS_PER_SECOND
        if self.partition_s <= 0 or (day_s % self.partition_s and self.partition_s % day_s):
            raise ValueError(
                f"trove.partition_s must divide a day or be whole days (3600, 86400...), got {self.partition_s}"
            )
        if self.partition_min_rows < 0:
            raise ValueError(f"trove.partition_min_rows must be >= 0, got {self.partition_min_rows}")
        if self.segment_rows < 1 or self.row_group_rows < 1:
            raise ValueError("trove.segment_rows and trove.row_group_rows must be >= 1")
        if self.flush_interval_s <= 0:
            raise ValueError(f"trove.flush_interval_s must be > 0, got {self.flush_interval_s}")
        if not 0 <= self.process_nice <= 19:
            raise ValueError(f"trove.process_nice must be in 0..19, got {self.process_nice}")
        if self.queue_batches < 1 or self.ring_slots < 1:
            raise ValueError(
                f"trove.queue_batches and trove.ring_slots must be >= 1, got {self.queue_batches}, {self.ring_slots}"
            )
        if self.fanin < 2:
            raise ValueError(f"trove.fanin must be >= 2, got {self.fanin}")
        if self.final_row_group_rows < 0:
            raise ValueError(
                f"trove.final_row_group_rows must be >= 0 (0: row_group_rows), got {self.final_row_group_rows}"
            )
        if self.row_group_rows % self.file_row_group_rows(final=True):
            # A merge hands the writer whole groups of ``row_group_rows``: final groups split them.
            raise ValueError(
                f"trove.final_row_group_rows ({self.final_row_group_rows}) must divide trove.row_group_rows "
                f"({self.row_group_rows}), or be 0"
            )
        if self.max_run_rows < self.row_group_rows:
            raise ValueError("trove.max_run_rows must be >= trove.row_group_rows")
        if self.intermediate_compression not in CODECS:
            raise ValueError(
                f"trove.intermediate_compression must be one of {', '.join(CODECS)}, "
                f"got {self.intermediate_compression!r}"
            )
        if self.compaction_memory_mb < 64:
            raise ValueError(f"trove.compaction_memory_mb must be >= 64, got {self.compaction_memory_mb}")
        if min(self.max_bytes, self.max_age_s, self.reserve_free_bytes) < 0:
            raise ValueError("trove.max_bytes, trove.max_age_s and trove.reserve_free_bytes must be >= 0")
        if self.regions < 1 or self.cells_per_region < 1:
            raise ValueError("trove.regions and trove.cells_per_region must be >= 1")

    @property
    def partition_ns(self) -> int:
        return self.partition_s * NS_PER_SECOND

    def file_row_group_rows(self, *, final: bool) -> int:
        """Rows per row group of a run file: ``final_row_group_rows`` for final (zstd) runs, never
        more than ``row_group_rows`` (a small ``row_group_rows`` alone gives small final groups)."""
        if final and self.final_row_group_rows:
            return min(self.final_row_group_rows, self.row_group_rows)
        return self.row_group_rows
