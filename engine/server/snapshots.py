"""Periodic snapshots taken by a forked copy-on-write child, and the journal's watermark rule.

Every ``--snapshot-every`` (payments sequenced, or seconds, whichever first) the sequencer, between
two batches (every deferred observer has run, so state is exactly that after journal entry
``journal.seq``), asks each hook to push its buffered output to the kernel, captures the state's
arrays by reference and forks. The child writes the snapshot file (``engine.snapshot``) from its
copy-on-write view of memory, touching nothing but the arrays, files and C code (no locks of
other threads: uvloop, the trove writer, pyarrow pools), fsyncs the journal segment and the
hooks' output files, renames and exits with ``os._exit``; the parent only pays for ``fork()``
(copying page tables: the *stall*, measured per snapshot and reported in ``stats()``). While the
child writes, pages the sequencer modifies are copied by the kernel, so memory grows by the pages
touched in that time (not by the state), up to the state's size in the worst case: fine up to
~10^8 accounts on this machine; at 1.4e9 accounts it would not fit, see the README.

When a child finishes, snapshots beyond ``snapshot_keep`` (newest first) are deleted and the
journal's segments are retired up to the watermark: the lowest of the oldest retained snapshot's
journal entry (so falling back to the previous snapshot still finds its entries) and each durable
consumer's durable entry (``Hook.durable_journal_seq``: the trove). The audit chain's file is
fsynced by every snapshot, so the snapshot is its durable point too.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.journal import Journal, JournalHeader
from engine.ledger import Ledger
from engine.snapshot import PARTIAL, Part, SnapshotSchedule, StateOwner, capture, list_snapshots, write_snapshot


def state_owners(ledger: Ledger) -> list[tuple[str, StateOwner]]:
    """The ledger and its hooks, by the names their snapshot parts carry."""
    return [("ledger", ledger), *((h.name, h) for h in ledger.hooks)]


def snapshot_refusal(ledger: Ledger) -> str:
    """Why this ledger cannot be snapshotted ("" if it can): a hook that did not declare its state."""
    undeclared = [h.name for h in ledger.hooks if not h.snapshots]
    if not undeclared:
        return ""
    return (
        f"snapshots off: hook(s) {', '.join(undeclared)} do not declare their state (Hook.snapshot_arrays), so a "
        "snapshot could not restore them; recovery replays the whole journal and no segment is deleted"
    )


class Snapshotter:
    """Takes the periodic snapshots of one server, and retires journal segments after each."""

    def __init__(
        self,
        directory: Path,
        schedule: SnapshotSchedule,
        keep: int,
        ledger: Ledger,
        journal: Journal,
        header: JournalHeader,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.directory, self.schedule, self.keep = directory, schedule, keep
        self.ledger, self.journal, self.header, self.log = ledger, journal, header, log
        directory.mkdir(parents=True, exist_ok=True)
        self._last_payments = ledger.clock.payments
        self._last_s = time.monotonic()
        self._child: int | None = None
        self._child_seq = 0
        self._child_started = 0.0
        self.taken = self.failed = 0
        self.stalls_ns: list[int] = []
        self.last_write_s = 0.0
        self.last_bytes = 0
        self.last_seq = 0
        self.watermark_seq = 0

    def due(self) -> bool:
        s = self.schedule
        payments = s.every_payments and self.ledger.clock.payments - self._last_payments >= s.every_payments
        seconds = s.every_s and time.monotonic() - self._last_s >= s.every_s
        return bool(payments or seconds)

    def maybe_start(self) -> None:
        """Between batches: reap a finished child; start the next snapshot if one is due."""
        self.poll()
        if self._child is None and self.schedule.enabled and self.due():
            self.start()

    def start(self) -> None:
        """Capture and fork now (the sequencer's stall is this call)."""
        t0 = time.perf_counter_ns()
        hooks = self.ledger.hooks
        for hook in hooks:
            hook.prepare_snapshot()
        parts = capture(state_owners(self.ledger))
        seq = self.journal.seq
        outputs = [p for h in hooks for p in h.output_files()]
        pid = os.fork()
        if pid == 0:  # the child: arrays, files and C code only, then _exit (no atexit, no finalizers)
            self._child_main(seq, parts, outputs)
        self.stalls_ns.append(time.perf_counter_ns() - t0)
        self._child, self._child_seq, self._child_started = pid, seq, time.monotonic()
        self._last_payments = self.ledger.clock.payments
        self._last_s = time.monotonic()

    def _child_main(self, seq: int, parts: list[Part], outputs: list[Path]) -> None:
        status = 1
        try:
            # Every inherited descriptor but the journal's goes: a child outliving a killed server
            # must not hold its listening port or its journal lock (the restart would be refused).
            keep = self.journal.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
            os.nice(10)  # the sequencer shares the cores: the snapshot yields to it
            write_snapshot(
                self.directory, seq, self.header, parts, sync_fds=[self.journal.fileno()], sync_paths=outputs
            )
            status = 0
        finally:
            os._exit(status)

    def poll(self, *, wait: bool = False) -> None:
        """Reap the child if it finished (``wait``: until it does); then prune and retire."""
        if self._child is None:
            return
        pid, status = os.waitpid(self._child, 0 if wait else os.WNOHANG)
        if pid == 0:
            return
        self._child = None
        self.last_write_s = time.monotonic() - self._child_started
        if os.waitstatus_to_exitcode(status) != 0:
            self.failed += 1
            for stale in self.directory.glob(f"*{PARTIAL}-{pid}"):
                stale.unlink(missing_ok=True)
            if self.log is not None:
                self.log(f"snapshot at journal entry {self._child_seq} FAILED (child status {status}); will retry")
            return
        self.taken += 1
        self.last_seq = self._child_seq
        snaps = list_snapshots(self.directory)
        self.last_bytes = next((p.stat().st_size for s, p in snaps if s == self._child_seq), 0)
        for _, old in snaps[self.keep :]:
            old.unlink(missing_ok=True)
        self.retire()

    def watermark(self) -> int:
        """The journal entry every durable consumer is past: the oldest retained snapshot, the trove."""
        snaps = list_snapshots(self.directory)
        consumers = [d for h in self.ledger.hooks if (d := h.durable_journal_seq()) is not None]
        return min([snaps[-1][0] if snaps else 0, *consumers])

    def retire(self) -> None:
        self.watermark_seq = self.watermark()
        with contextlib.suppress(OSError):  # a failed delete keeps a segment; never fatal
            self.journal.retire_through(self.watermark_seq)

    def close(self) -> None:
        """Wait for a snapshot being written (it is consistent and useful)."""
        self.poll(wait=True)

    def stats(self) -> dict[str, Any]:
        stalls = self.stalls_ns or [0]
        return {
            "directory": str(self.directory),
            "every_payments": self.schedule.every_payments,
            "every_s": self.schedule.every_s,
            "taken": self.taken,
            "failed": self.failed,
            "in_progress": self._child is not None,
            "last_seq": self.last_seq,
            "last_bytes": self.last_bytes,
            "last_write_s": self.last_write_s,
            "stall_ms_last": stalls[-1] / 1e6,
            "stall_ms_max": max(stalls) / 1e6,
            "watermark_seq": self.watermark_seq,
            "kept": len(list_snapshots(self.directory)),
        }
