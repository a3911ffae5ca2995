"""The trove: every payment that reached the ledger, persisted as partitioned Parquet.

``Trove.append(batch, codes, batch_seq)`` is called on the sequencer's thread and only copies
the batch into a bounded queue (when the queue is full the sequencer waits: back-pressure,
never a dropped row; the wait is counted). A writer thread turns batches into rows and buffers
them (the memtable); every ``segment_rows`` rows or ``flush_interval_s`` it hands the memtable
to a flusher thread, which writes, per partition touched, one tier-0 run (the rows sorted by
payer in one file and by payee in another, ``files.write_parquet``), then commits the manifest:
the trove is then durable through the last batch written. The writer goes on filling the next
memtable meanwhile (double-buffered: a flush of seconds does not stop ingest). A compactor thread
merges runs, size-tiered (``compaction``), and applies retention (``retention``). The threads
measure their own CPU time (``time.thread_time_ns``), which the hook charges to itself.

The journal is the source of truth. A segment whose file is missing or damaged at open is
taken out of the manifest, named in ``problems``, and remembered as rows to rebuild (its
partition and batch ranges); ``rebuild_from(entries)`` (or the live hook fed the replayed
journal) writes them again, and skips the rows the trove already holds, using batch_seq. A
segment that a merge finds damaged while the trove runs is taken out the same way
(``_set_aside_live``): its ranges committed as rows to rebuild at the next open, ingest and the
other merges going on.

Failures are loud: when the disk fills (or any write fails) ingest stops, ``failure`` says why,
and every later ``append`` raises ``TroveStopped``; rows not persisted are counted.

The first flush beside a journal (issues 17, 21: a ~90 ms latency spike in the second the first
interval flush lands, ``surveillance`` at 300,000/s with ``--fsync interval:10``, no append
wait). Looked at on 2026-12-04, shared machine, with ``perf`` tracepoints (every fsync and
fdatasync, the scheduler's switches) and ``/proc`` sampled every 50 ms: the flush writes one run
per partition it touches, two files of 14-18 MB each (fsynced in 9-171 ms on this busy disk), not
~100 MB ones; the disk's ext4 has no journal (no jbd2 thread, no jbd2 event), so no jbd2 commit
ties the journal's fsync to the trove's writeback; journal fsyncs overlapping a trove fsync were
no slower than the others (max 8-43 against 51-136 ms from other disk users); no compaction
stall, direct reclaim or major fault in the server; every child thread at nice 10 but OpenBLAS's
idle worker (fixed: ``process.renice_threads``); the child held the CPU the sequencer waited for
0.2-0.5 s of a 14-s run, up to 73 ms a second while flushing (the generator and other sessions'
processes: 76-96% of its wait). What the spike is on a quiet machine stays unproven. Large files
do stall the journal: ``files``, "Incremental writeback".
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.trove import compaction, retention, rollup
from engine.trove.config import TroveConfig
from engine.trove.files import CorruptSegment, check_file, write_parquet
from engine.trove.manifest import Manifest, Segment, load_manifest, merge_ranges, save_manifest
from engine.trove.schema import (
    account_order,
    arrow_schema,
    concat_rows,
    extend_partitions,
    partition_of,
    partitions_of,
    rows_of,
    take_rows,
)

#: The compactor looks for work at least this often (it is also woken after every flush).
_COMPACTOR_POLL_S = 0.5
#: How often a merge waiting for the flusher checks that the trove is not closing.
_GATE_POLL_S = 0.1
#: What the writer's loop takes when ``flush_interval_s`` passed with its queue dry.
_INTERVAL = object()


class TroveStopped(RuntimeError):
    """The trove stopped ingesting (disk full, write error); the message says why and what to do."""


class TroveFeed:
    """What the hook feeds: ``Trove`` (threads in this process) or ``TroveProcess`` (a child process)."""

    def append(self, batch: np.ndarray, codes: np.ndarray, batch_seq: int) -> None:
        raise NotImplementedError

    def flush(self, *, compact: bool = False) -> None:
        raise NotImplementedError

    def rebuild_from(self, entries: Iterable[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Write again, from journal entries ``(batch_seq, batch, codes)`` in order, the rows the trove
        lacks: those past ``durable_through_seq`` and those of segments lost or damaged. Rows the
        trove already holds are skipped, so replaying a whole journal is safe."""
        for seq, batch, codes in entries:
            self.append(batch, codes, seq)
        self.flush()


class Trove(TroveFeed):
    """A trove directory opened for writing (``Trove.open``), or ``TroveReader`` for queries only."""

    def __init__(self, root: Path, config: TroveConfig, manifest: Manifest, *, temporary: bool) -> None:
        self.root = root
        self.config = config
        self.manifest = manifest
        self.temporary = temporary
        #: Files found damaged, missing or foreign at open, by name (never read).
        self.problems: list[str] = []
        #: (partition, batch ranges) whose rows must be rebuilt from the journal.
        self.to_rebuild: list[tuple[int, list[tuple[int, int]]]] = [(p, list(r)) for p, r in manifest.to_rebuild]
        #: Of the same kind, segments a merge found damaged while the trove ran (``_set_aside_live``):
        #: committed in the manifest's ``to_rebuild``, so the next open rebuilds them from the journal,
        #: but not in ``to_rebuild`` now (its ranges are claimed by the flushes that replay a journal).
        self._set_aside: list[tuple[int, list[tuple[int, int]]]] = []
        self.failure = ""
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[int, np.ndarray, np.ndarray] | threading.Event | None] = queue.Queue(
            config.queue_batches
        )
        # Rows handed over by the sequencer / taken by the writer: each written by one thread only,
        # so the sequencer never takes a lock (the lock is held across manifest fsyncs).
        self._rows_in = 0
        self._rows_taken = 0
        self._buffered_rows = 0
        #: Rows handed to the flusher and not yet written; the last batch_seq handed to it.
        self._flushing_rows = 0
        self._handed_seq = manifest.durable_through_seq
        self._flush_jobs: queue.Queue[tuple[list[dict[str, np.ndarray]], int, int] | None] = queue.Queue()
        self._flush_idle = threading.Event()
        self._flush_idle.set()
        self._cpu_lock = threading.Lock()
        #: The flusher's and compactor's CPU clocks (each taken by its thread) and their last readings:
        #: their CPU so far, a flush or merge in progress included (``stats``), which the counters
        #: above only add once it is done.
        self._thread_clocks: dict[str, int] = {}
        self._thread_cpu: dict[str, int] = {"flusher_thread_cpu_ns": 0, "compactor_thread_cpu_ns": 0}
        self._readers = 0
        self._garbage: list[Path] = []
        #: Files of damaged segments (found at open, or set aside by a merge), renamed ``*.damaged``
        #: with the garbage: the evidence kept, out of the way of the trove's names.
        self._damaged: list[Path] = []
        self._compact_now = threading.Event()
        self._compacting = threading.Lock()  # one merge at a time (compactor thread or compact_all)
        self._stop = threading.Event()
        self.counters = {
            "rows_appended": 0,
            "rows_skipped_durable": 0,
            "rows_not_persisted": 0,
            "rows_expired_on_arrival": 0,
            "segments_written": 0,
            "merges": 0,
            "rows_merged": 0,
            # Segments a merge found damaged while the trove ran, taken out (``_set_aside_live``).
            "segments_set_aside": 0,
            "rows_set_aside": 0,
            "append_wait_ns": 0,
            # The writer waiting for the flusher (a memtable full while the previous one is written).
            "flush_wait_ns": 0,
            # The writer's and the flusher's threads.
            "writer_cpu_ns": 0,
            # Of it, the flusher's: memtables written whole (sorted, encoded, made durable), with
            # their rows; the first flush apart (it also pays first-touch memory: fresh allocations). A
            # measured window charges the trove per row flushed from these (``loadgen.plan.inputs``),
            # not the flush CPU that happened to fall inside it (issue 21).
            "flushes": 0,
            "rows_flushed": 0,
            "flush_cpu_ns": 0,
            "first_flush_rows": 0,
            "first_flush_cpu_ns": 0,
            "compaction_cpu_ns": 0,
            "backlog_rows_peak": 0,
            # Merges waiting for the flusher (``_merge_gate``): wall time, not CPU.
            "compaction_yield_ns": 0,
        }
        self._writer = threading.Thread(target=self._writer_loop, name=f"trove-writer {root}", daemon=True)
        self._flusher = threading.Thread(target=self._flusher_loop, name=f"trove-flusher {root}", daemon=True)
        self._compactor = threading.Thread(target=self._compactor_loop, name=f"trove-compactor {root}", daemon=True)
        self._con: Any = None
        #: Called by the writer after each flush with (durable_seq(), rows handed over and done
        #: with): how ``TroveProcess`` shows the parent its progress without a round trip.
        self.on_durable: Callable[[int, int], None] | None = None

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, config: TroveConfig, *, deep_check: bool = False, start: bool = True) -> Trove:
        """Open (or create) the trove at ``config.dir`` (a temporary directory if "").

        Checks every listed file (``deep_check``: also its digest), sets damaged ones aside as
        rows to rebuild, removes uncommitted temporary files, checks the disk has room for what
        is configured (ValueError otherwise), and starts the writer and compactor threads.
        """
        temporary = not config.dir
        root = Path(tempfile.mkdtemp(prefix="cbdc-trove-")) if temporary else Path(config.dir)
        root.mkdir(parents=True, exist_ok=True)
        manifest = load_manifest(root)
        if manifest is None:
            manifest = Manifest(trove_id=uuid.uuid4().hex, partition_ns=config.partition_ns)
            save_manifest(root, manifest)
        elif manifest.partition_ns != config.partition_ns:
            raise ValueError(
                f"trove {root} is partitioned by {manifest.partition_ns // 10**9} s, the configuration says "
                f"{config.partition_s} s; use the trove's partition_s or a new directory"
            )
        trove = cls(root, config, manifest, temporary=temporary)
        if temporary:  # removed at exit even if nobody calls close()
            weakref.finalize(trove, shutil.rmtree, root, ignore_errors=True)
        trove._check(deep=deep_check)
        retention.check_disk(root, config, trove.bytes_on_disk(), trove.bytes_per_row())
        if start:
            # Imported here, at attach time: an import in the writer thread would hold the GIL
            # (and stall the sequencer) for a few hundred ms in the middle of a measured run.
            import duckdb  # noqa: F401
            import pyarrow.parquet  # noqa: F401

            trove._writer.start()
            trove._compactor.start()
        return trove

    def _check(self, *, deep: bool) -> None:
        """Take damaged segments out of the manifest (naming them); remove stray temporary files."""
        for tmp in [*self.root.glob("segments/*/*.tmp"), *self.root.glob("runs/*/*.tmp")]:
            tmp.unlink()  # a write interrupted before its rename: never part of the trove
        shutil.rmtree(self.root / compaction.SPILL_DIR, ignore_errors=True)  # a merge's spill, if one was cut short
        good: list[Segment] = []
        for s in self.manifest.segments:
            try:
                for f in s.files:
                    check_file(self.root, f, trove_id=self.manifest.trove_id, segment_id=s.id, rows=s.rows, deep=deep)
            except CorruptSegment as exc:
                self.problems.append(str(exc))
                self.to_rebuild.append((s.partition, list(s.seq_ranges)))
                self._damaged.extend(self.root / f.path for f in s.files)
                continue
            good.append(s)
        self._collect_garbage()  # no reader yet: the damaged files are renamed now
        listed = {f.path for s in self.manifest.segments for f in s.files}
        for path in sorted([*self.root.glob("segments/*/*.parquet"), *self.root.glob("runs/*/*.parquet")]):
            if str(path.relative_to(self.root)) not in listed:
                self.problems.append(f"trove file {path} is not listed in the manifest: ignored, never read")
        if len(good) != len(self.manifest.segments):
            self.manifest.segments = good
            self.manifest.to_rebuild = self._committed_to_rebuild()
            save_manifest(self.root, self.manifest)

    def _committed_to_rebuild(self) -> list[tuple[int, list[tuple[int, int]]]]:
        """The manifest's ``to_rebuild``: the ranges being rebuilt now and those set aside since."""
        return [(p, list(r)) for p, r in [*self.to_rebuild, *self._set_aside]]

    def _set_aside_live(self, segment: Segment, exc: CorruptSegment) -> None:
        """A merge found ``segment`` damaged while the trove runs: take it out of the manifest,
        rename its files ``*.damaged`` (once no query reads them), and commit its batch ranges as
        rows to rebuild, which the next open does from the journal (the watermark, ``durable_seq``,
        falls back below them at once, so the journal is kept from there). Ingest and the other
        merges go on; queries meanwhile lack its rows."""
        with self._lock:
            m = self.manifest
            m.segments = [s for s in m.segments if s.id != segment.id]
            self._set_aside.append((segment.partition, list(segment.seq_ranges)))
            m.to_rebuild = self._committed_to_rebuild()
            save_manifest(self.root, m)
            self.counters["segments_set_aside"] += 1
            self.counters["rows_set_aside"] += segment.rows
            # Renamed once no query holds a snapshot that lists them (``_collect_garbage``).
            self._damaged.extend(self.root / f.path for f in segment.files)
        self.problems.append(f"{exc}: set aside while the trove ran, to be rebuilt from the journal at its next open")
        self._collect_garbage()

    # ---- the sequencer's side ----------------------------------------------------------------

    def append(self, batch: np.ndarray, codes: np.ndarray, batch_seq: int) -> None:
        """Queue an applied batch (copied); waits while the writer is ``queue_batches`` behind."""
        self.append_owned(batch.copy(), np.array(codes, copy=True), batch_seq)

    def append_owned(self, batch: np.ndarray, codes: np.ndarray, batch_seq: int) -> None:
        """``append`` of arrays nobody else will modify (the child's copies out of the ring): not copied again."""
        if self.failure:
            self.counters["rows_not_persisted"] += len(batch)
            raise TroveStopped(self.failure)
        item = (batch_seq, batch, codes)
        self._rows_in += len(batch)
        backlog = self.backlog_rows
        if backlog > self.counters["backlog_rows_peak"]:
            self.counters["backlog_rows_peak"] = backlog
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            t0 = time.perf_counter_ns()
            self._queue.put(item)
            self.counters["append_wait_ns"] += time.perf_counter_ns() - t0

    @property
    def backlog_rows(self) -> int:
        """Rows handed to the trove and not yet durable in a segment (queued, in the memtable, or
        being flushed)."""
        return self._rows_in - self._rows_taken + self._buffered_rows + self._flushing_rows

    def flush(self, *, compact: bool = False) -> None:
        """Return once everything appended so far is durable (and, if ``compact``, fully merged)."""
        if self._writer.is_alive():
            done = threading.Event()
            self._queue.put(done)
            done.wait()
        if self.failure:
            raise TroveStopped(self.failure)
        if compact:
            self.compact_all()

    def needs_journal_from(self) -> int:
        """The first journal sequence number the trove still needs (keep journal entries from here)."""
        return self.durable_seq() + 1

    def durable_seq(self) -> int:
        """Every journal entry up to this one is in the trove (or expired): the trove's watermark,
        committed in ``trove.json`` (``Manifest.durable_seq``). Journal segments wholly at or below
        it may be deleted as far as the trove is concerned."""
        with self._lock:
            return self.manifest.durable_seq()

    @property
    def durable_through_seq(self) -> int:
        """The last batch whose rows are all written (segments lost since may still be rebuilding)."""
        return self.manifest.durable_through_seq

    # ---- the writer thread -------------------------------------------------------------------

    def _writer_loop(self) -> None:
        """Take batches into the memtable; hand a full (or timed-out) memtable to the flusher thread
        and go on taking batches while it is written (``_flusher_loop``: double-buffered, so a
        flush of seconds no longer stops ingest; a second full memtable waits for the first)."""
        self._flusher.start()
        pending: list[dict[str, np.ndarray]] = []
        seen_seq = 0  # the last batch_seq handed over (replays start low, live batches go on from there)
        deadline = time.monotonic() + self.config.flush_interval_s
        t_cpu = time.thread_time_ns()
        while True:
            item: object  # a queued batch, an Event (flush and wait), None (stop) or _INTERVAL
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                # The interval passed with the queue dry: flush what is buffered, and do not wait
                # for the write (the flusher reports durability; waiting here stalled ingest, and
                # through the ring the sequencer, for the whole write of a memtable).
                item = _INTERVAL
                deadline = time.monotonic() + self.config.flush_interval_s
            flush = item is None or item is _INTERVAL or isinstance(item, threading.Event)
            if isinstance(item, tuple):
                seq, batch, codes = item
                self._rows_taken += len(batch)
                if not self.failure:
                    rows = self._rows_needed(rows_of(batch, codes, seq), seq)
                    if rows is not None:
                        pending.append(rows)
                        self._buffered_rows += len(rows["payer"])
                    seen_seq = seq
                else:
                    self.counters["rows_not_persisted"] += len(batch)
                # The interval counts however busy the queue is: under a steady stream (or a
                # backlog) ``get`` never times out, and the memtable would wait for ``segment_rows``.
                flush = self._buffered_rows >= self.config.segment_rows or time.monotonic() >= deadline
            if flush and not self.failure and (pending or seen_seq > self._handed_seq):
                self._hand_over(pending, seen_seq)
                pending = []
                deadline = time.monotonic() + self.config.flush_interval_s
            if self.failure and pending:  # stopped (by the compactor too): buffered rows are counted, not kept
                self.counters["rows_not_persisted"] += self._buffered_rows
                pending = []
                self._buffered_rows = 0
            if item is None or isinstance(item, threading.Event):
                self._wait_flushed()
                if self.on_durable is not None:
                    self.on_durable(self.durable_seq(), self._rows_taken - self._buffered_rows)
            elif item is _INTERVAL and self._flush_idle.is_set() and self.on_durable is not None:
                # Nothing in flight: report rows taken and skipped (durable already) meanwhile.
                self.on_durable(self.durable_seq(), self._rows_taken - self._buffered_rows)
            now_cpu = time.thread_time_ns()
            self._add_writer_cpu(now_cpu - t_cpu)
            t_cpu = now_cpu
            if isinstance(item, threading.Event):
                item.set()
            if item is None:
                self._flush_jobs.put(None)
                self._flusher.join()
                return

    def _hand_over(self, pending: list[dict[str, np.ndarray]], seen_seq: int) -> None:
        """Give the memtable to the flusher (once it is done with the previous one). While rows are
        rebuilt from the journal the flush is waited for: ``_rows_needed`` reads what it changes."""
        self._wait_flushed()
        self._flushing_rows, self._buffered_rows = self._buffered_rows, 0
        self._handed_seq = max(self._handed_seq, seen_seq)
        self._flush_idle.clear()
        self._flush_jobs.put((pending, seen_seq, self._rows_taken))
        if self.to_rebuild:
            self._wait_flushed()

    def _wait_flushed(self) -> None:
        """Wait until the flusher has written what it was given (counted: the writer stalled)."""
        if not self._flush_idle.is_set():
            t0 = time.perf_counter_ns()
            self._flush_idle.wait()
            self.counters["flush_wait_ns"] += time.perf_counter_ns() - t0

    def _flusher_loop(self) -> None:
        """Write each memtable the writer hands over (``_write_segments``), then report progress."""
        self._thread_clocks["flusher_thread_cpu_ns"] = time.pthread_getcpuclockid(threading.get_ident())
        while (job := self._flush_jobs.get()) is not None:
            pending, seen_seq, rows_done = job
            t0 = time.thread_time_ns()
            if not self.failure:
                try:
                    self._write_segments(pending, seen_seq)
                except OSError as exc:
                    self._stop_ingest(exc)
            if self.failure:
                self.counters["rows_not_persisted"] += self._flushing_rows
            flushed = 0 if self.failure else self._flushing_rows
            pending.clear()
            self._flushing_rows = 0
            self._compact_now.set()
            if self.on_durable is not None:
                self.on_durable(self.durable_seq(), rows_done)
            spent = time.thread_time_ns() - t0
            self._add_writer_cpu(spent, flushed)
            self._flush_idle.set()

    def _add_writer_cpu(self, ns: int, flushed_rows: int | None = None) -> None:
        """Add the writer's (``flushed_rows`` None) or a flush's CPU (the flusher's, with its rows)."""
        with self._cpu_lock:  # the writer's and the flusher's threads both add to it
            self.counters["writer_cpu_ns"] += ns
            if flushed_rows:
                c = self.counters
                if c["flushes"] == 0:
                    c["first_flush_rows"], c["first_flush_cpu_ns"] = flushed_rows, ns
                c["flushes"] += 1
                c["rows_flushed"] += flushed_rows
                c["flush_cpu_ns"] += ns

    def _rows_needed(self, rows: dict[str, np.ndarray], seq: int) -> dict[str, np.ndarray] | None:
        """The rows of batch ``seq`` the trove does not hold yet (None: none)."""
        if seq > self._handed_seq:  # past what is durable or being flushed
            return rows
        if not self.to_rebuild:
            self.counters["rows_skipped_durable"] += len(rows["payer"])
            return None
        if not self.manifest.partition_starts:
            self.counters["rows_skipped_durable"] += len(rows["payer"])
            return None
        periods = partition_of(rows["timestamp_ns"], self.manifest.partition_ns)
        parts = partitions_of(periods, self.manifest.partition_starts)
        wanted = np.zeros(len(parts), dtype=bool)
        for part, ranges in self.to_rebuild:
            if any(lo <= seq <= hi for lo, hi in ranges):
                wanted |= parts == part
        self.counters["rows_skipped_durable"] += int((~wanted).sum())
        return take_rows(rows, wanted) if wanted.any() else None

    def _write_segments(self, pending: list[dict[str, np.ndarray]], seen_seq: int) -> None:
        """One tier-0 run per partition of the buffered rows, then commit the manifest.

        A segment claims the batch ranges it is complete for: this flush's new batches
        (durable_through + 1 .. seen_seq) and, for rows rebuilt from the journal, the part of
        the lost segment's ranges that the replay has passed (the rest stays to be rebuilt).
        """
        free = shutil.disk_usage(self.root).free
        if free < self.config.reserve_free_bytes:
            raise retention.TroveDiskFull(
                f"only {free / 2**20:.0f} MiB free, below the trove's reserve of "
                f"{self.config.reserve_free_bytes / 2**20:.0f} MiB"
            )
        m = self.manifest
        first_new = m.durable_through_seq + 1
        claims: dict[int, list[tuple[int, int]]] = {}
        still_missing: list[tuple[int, list[tuple[int, int]]]] = []
        for part, ranges in self.to_rebuild:
            claims.setdefault(part, []).extend((lo, min(hi, seen_seq)) for lo, hi in ranges if lo <= seen_seq)
            rest = [(max(lo, seen_seq + 1), hi) for lo, hi in ranges if hi > seen_seq]
            if rest:
                still_missing.append((part, rest))
        new: list[Segment] = []
        starts = m.partition_starts
        if pending:
            rows = concat_rows(pending)
            pending.clear()  # the batches' columns go now, not after the write (a memtable holds ~250 MB)
            periods = partition_of(rows["timestamp_ns"], m.partition_ns)
            late = periods < m.expired_below_partition
            if late.any():
                self.counters["rows_expired_on_arrival"] += int(late.sum())
            newest_rows = sum(s.rows for s in m.segments if starts and s.partition == starts[-1])
            starts = extend_partitions(starts, periods[~late], newest_rows, self.config.partition_min_rows)
            parts = partitions_of(periods, starts) if starts else periods
            schema = arrow_schema()
            held: Counter[int] = Counter()  # rows each partition holds
            for s in m.segments:
                held[s.partition] += s.rows
            for part, part_rows in _by_partition(rows, parts, late):
                ranges = list(claims.get(part, []))
                if (part_rows["batch_seq"] >= first_new).any():
                    ranges.append((first_new, seen_seq))
                # A partition this small may close before a merge; past it, merges will follow.
                final = held[part] < (self.config.fanin - 1) * self.config.segment_rows
                new.append(self._write_run(part_rows, part, merge_ranges(ranges), schema, final=final))
        with self._lock:
            m.segments.extend(new)
            m.partition_starts = starts
            m.durable_through_seq = max(m.durable_through_seq, seen_seq)
            self.to_rebuild = still_missing
            m.to_rebuild = self._committed_to_rebuild()
            save_manifest(self.root, m)
        self.counters["segments_written"] += len(new)
        self.counters["rows_appended"] += sum(s.rows for s in new)

    def _write_run(
        self, rows: dict[str, np.ndarray], part: int, ranges: list[tuple[int, int]], schema: Any, *, final: bool
    ) -> Segment:
        """The buffered rows of one partition as a tier-0 run: one file sorted by payer, one by payee.

        A run is what an LSM tree's memtable flush writes: sorted here in memory (one numpy argsort
        per ordering), so a query reads one row group of it, never scans it, and its merges are
        k-way merges of sorted runs (``compaction.merged_runs``), not sorts. (Arrival-ordered
        segments, which earlier versions wrote once a partition held ``fanin - 1`` segments, cost
        ~0.9 us/row less to write but ~0.6 us/row more to merge, and every query scanned them:
        a few ms per segment.) ``final``: the partition may never merge it (it holds fewer than
        ``fanin - 1`` segments' rows), so it is zstd; otherwise the cheaper intermediate codec.
        """
        import pyarrow as pa

        with self._lock:
            seg_id = self.manifest.next_segment_id
            self.manifest.next_segment_id += 1
        ts = rows["timestamp_ns"]
        files = []
        n = 0
        arrival = pa.Table.from_arrays([pa.array(rows[name]) for name in schema.names], schema=schema)
        for ordering in compaction.ORDERINGS:
            entry, n = write_parquet(
                self.root,
                f"runs/p{part}/r{seg_id:08d}.{ordering}.parquet",
                ordering,
                arrival.take(account_order(rows[ordering], ts)).to_batches(),
                schema,
                trove_id=self.manifest.trove_id,
                segment_id=seg_id,
                row_group_rows=self.config.file_row_group_rows(final=final),
                compression="zstd" if final else self.config.intermediate_compression,
                whole_digest=final,
            )
            files.append(entry)
        run = Segment(
            id=seg_id,
            kind="run",
            partition=part,
            rows=n,
            min_timestamp_ns=int(ts.min()),
            max_timestamp_ns=int(ts.max()),
            seq_ranges=ranges,
            files=files,
            tier=compaction.tier_of(n, self.config),
        )
        rollup.write_run_rollup(self.root, run, rows, self.config)  # aggregate's rollup, before the commit
        return run

    def _stop_ingest(self, exc: OSError) -> None:
        self.failure = (
            f"trove {self.root} stopped ingesting: {exc}. Rows from here on are not in the trove (the journal, "
            "if on, still has them: free disk space and restart to rebuild them); lower trove.max_bytes to keep "
            "the trove within the disk"
        )

    # ---- the compactor thread ----------------------------------------------------------------

    def _compactor_loop(self) -> None:
        self._thread_clocks["compactor_thread_cpu_ns"] = time.pthread_getcpuclockid(threading.get_ident())
        while not self._stop.is_set():
            self._compact_now.wait(_COMPACTOR_POLL_S)
            self._compact_now.clear()
            if self._stop.is_set():
                return
            try:
                while not self._stop.is_set() and self._compact_step(everything=False):
                    pass
            except Exception as exc:  # compaction failing must stop ingest loudly, not corrupt anything
                if self._stop.is_set():
                    return  # close() interrupted the merge on purpose: its sources are still listed
                if isinstance(exc, OSError):
                    self._stop_ingest(exc)
                else:
                    self.failure = f"trove {self.root}: compaction failed ({type(exc).__name__}: {exc})"
                return

    def compact_due(self) -> None:
        """The merges the policy calls for now (what the compactor thread does as it keeps up), until
        none is left: after it, the trove is as a compactor that keeps up would leave it."""
        while self._compact_step(everything=False):
            pass

    def compact_all(self) -> None:
        """Merge until no merge is left to do (closing partitions' ingest segments too)."""
        while self._compact_step(everything=True):
            pass

    def _compact_step(self, *, everything: bool) -> bool:
        """One merge, then retention; False when there was nothing to merge."""
        t0 = time.thread_time_ns()
        with self._compacting:
            return self._compact_locked(everything=everything, t0=t0)

    def _compact_locked(self, *, everything: bool, t0: int) -> bool:
        try:
            with self._lock:
                step = (
                    compaction.plan_merge(self.manifest, self.config, everything=everything)
                    if self.config.compact
                    else None
                )
                sources = step.sources if step is not None else []
                if step is not None:
                    seg_id = self.manifest.next_segment_id
                    self.manifest.next_segment_id += 1
            if step is not None:
                try:
                    run = compaction.merge(
                        self.root,
                        sources,
                        seg_id,
                        self.manifest.trove_id,
                        self.config,
                        duckdb_connection=self._duckdb,
                        stopping=self._merge_gate,
                        final=step.final,
                    )
                except CorruptSegment as exc:  # a source's file damaged: that source set aside, the rest merge on
                    damaged = next((s for s in sources for f in s.files if exc.path == self.root / f.path), None)
                    if damaged is None:
                        raise
                    self._set_aside_live(damaged, exc)
                    return True
                rollup.write_merged_rollup(self.root, sources, run, self.config)  # the sum of the sources'
                with self._lock:
                    ids = {s.id for s in sources}
                    self.manifest.segments = [s for s in self.manifest.segments if s.id not in ids] + [run]
                    save_manifest(self.root, self.manifest)
                    self._garbage.extend(self.root / f.path for s in sources for f in s.files)
                    self.counters["merges"] += 1
                    self.counters["rows_merged"] += run.rows
                self._collect_garbage()
            # After the merge, never during it: retention only runs under the compaction lock.
            expired = self._apply_retention()
            return bool(sources) or expired
        finally:
            self.counters["compaction_cpu_ns"] += time.thread_time_ns() - t0

    def _merge_gate(self) -> bool:
        """Polled by a merge between its steps: True stops it (the trove is closing). While the
        flusher writes a memtable, the merge waits (counted in ``compaction_yield_ns``): the two
        share the child's GIL and, at nice 10, what is left of the CPU, and a flush that falls
        behind the next memtable stalls ingest (the sequencer's append waits), while a merge that
        falls behind only leaves more runs to read until it catches up (``merge_debt_rows``)."""
        if not self._flush_idle.is_set() and not self._stop.is_set():
            t0 = time.perf_counter_ns()
            while not self._flush_idle.wait(_GATE_POLL_S) and not self._stop.is_set():
                pass
            self.counters["compaction_yield_ns"] += time.perf_counter_ns() - t0
        return self._stop.is_set()

    def _duckdb(self) -> Any:
        """The compactor's DuckDB connection (for the merges it sorts), made on first use."""
        if self._con is None:
            self._con = compaction.connect(self.config, self.root)
        return self._con

    def _apply_retention(self) -> bool:
        with self._lock:
            expire = retention.expired_partitions(self.manifest, self.config, root=self.root)
            if not expire:
                return False
            m = self.manifest
            gone = [s for s in m.segments if s.partition in expire]
            m.segments = [s for s in m.segments if s.partition not in expire]
            m.expired_below_partition = max(m.expired_below_partition, m.partition_end(max(expire)))
            m.rows_expired += sum(s.rows for s in gone)
            save_manifest(self.root, m)
            self._garbage.extend(self.root / f.path for s in gone for f in s.files)
        self._collect_garbage()
        return True

    def _collect_garbage(self) -> None:
        """Delete files no longer listed (and rename those set aside), once no in-process query holds
        a snapshot."""
        with self._lock:
            if self._readers:
                return
            garbage, self._garbage = self._garbage, []
            damaged, self._damaged = self._damaged, []
        for path in garbage:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):  # an emptied partition directory goes too
                path.parent.rmdir()
        for path in damaged:  # the evidence kept, out of the way of the trove's names (``_set_aside_live``)
            with contextlib.suppress(FileNotFoundError):
                path.rename(path.with_name(path.name + ".damaged"))
        if garbage or damaged:  # and the files derived from them (rollups, sidecars): no query is building one now
            rollup.remove_derived(self.root, [*garbage, *damaged])

    # ---- reading -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[list[Segment]]:
        """The committed segments; their files are not deleted while the snapshot is held."""
        with self._lock:
            self._readers += 1
            segments = list(self.manifest.segments)
        try:
            yield segments
        finally:
            with self._lock:
                self._readers -= 1
            self._collect_garbage()

    def bytes_on_disk(self) -> int:
        return retention.disk_bytes(self.root, sum(s.bytes for s in self.manifest.segments))["bytes_on_disk"]

    def bytes_per_row(self) -> float:
        rows = self.manifest.rows
        return self.bytes_on_disk() / rows if rows else float(retention.ASSUMED_BYTES_PER_ROW)

    def stats(self) -> dict[str, Any]:
        """Rows, bytes on disk, segments, compacted rows, backlog (ingest, and compaction's merge
        debt), CPU of the writer and compactor."""
        with self._lock:
            segs = list(self.manifest.segments)
            out = manifest_stats(self.manifest, segs, self.root)
            debt_rows, debt_merges = compaction.merge_debt(self.manifest, self.config)
        out.update(self.counters)
        for name, clock in list(self._thread_clocks.items()):
            with contextlib.suppress(OSError):  # the thread ended: its last reading stands
                self._thread_cpu[name] = max(self._thread_cpu[name], time.clock_gettime_ns(clock))
        out.update(self._thread_cpu)
        out.update(
            dir=str(self.root),
            temporary=self.temporary,
            backlog_rows=self.backlog_rows,
            # Of the backlog, rows in the writer's memtable (by design, up to segment_rows): the
            # rest wait in its queue (the writer behind).
            buffered_rows=self._buffered_rows,
            # Of it, rows of a memtable the flusher is writing now (0: no flush running).
            flushing_rows=self._flushing_rows,
            merge_debt_rows=debt_rows,
            merge_debt_merges=debt_merges,
            failure=self.failure,
            problems=list(self.problems),
        )
        return out

    def background_cpu_ns(self) -> int:
        """CPU time of the writer and compactor threads so far."""
        return self.counters["writer_cpu_ns"] + self.counters["compaction_cpu_ns"]

    # ---- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Write everything appended, stop the threads, delete the directory if it is temporary."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        self._stop.set()
        self._compact_now.set()
        if self._compactor.is_alive():
            if self._con is not None:
                self._con.interrupt()
            self._compactor.join()
        if self._con is not None:
            self._con.close()
            self._con = None
        self._collect_garbage()
        if self.temporary and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)


def _by_partition(
    rows: dict[str, np.ndarray], parts: np.ndarray, late: np.ndarray
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """The rows of each partition, skipping ``late`` ones. Rows come in time order but for a few
    (rebuilt ones, clocks out of order), so partitions are nearly always consecutive slices of
    the flush: then each is passed on as a view (no sort for ``np.unique``, no mask, no copy: a
    boolean take of a 2^22-row memtable per partition cost ~40 ns per row and partition)."""
    if not len(parts):
        return
    if not late.any() and not (np.diff(parts) < 0).any():
        bounds = np.flatnonzero(np.diff(parts)) + 1
        for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(parts)], strict=True):
            yield int(parts[lo]), {name: col[lo:hi] for name, col in rows.items()}
        return
    for part in np.unique(parts[~late]).tolist():
        yield part, take_rows(rows, (parts == part) & ~late)


def manifest_stats(manifest: Manifest, segments: list[Segment], root: Path | None = None) -> dict[str, Any]:
    """Figures that follow from the committed manifest alone (also for a trove no process has open).

    With ``root``, ``bytes_on_disk`` is everything the trove keeps there (``retention.disk_bytes``:
    the segments' files, ``sidecar_bytes``, ``rollup_bytes`` and the manifest, ``manifest_bytes``),
    what retention's ``max_bytes`` bounds; without it, the segments' files alone."""
    rows = sum(s.rows for s in segments)
    size = sum(s.bytes for s in segments)
    derived = retention.disk_bytes(root, size) if root is not None else {}
    size = derived.get("bytes_on_disk", size)
    return derived | {
        "rows": rows,
        "bytes_on_disk": size,
        "bytes_per_row": size / rows if rows else 0.0,
        "segments": len(segments),
        "ingest_segments": sum(s.kind == "ingest" for s in segments),
        "runs": sum(s.kind == "run" for s in segments),
        "compacted_rows": sum(s.rows for s in segments if s.kind == "run"),
        "compacted_bytes": sum(s.bytes for s in segments if s.kind == "run"),
        "partitions": len({s.partition for s in segments}),
        "durable_through_seq": manifest.durable_through_seq,
        "rows_expired": manifest.rows_expired,
        "trove_id": manifest.trove_id,
    }
