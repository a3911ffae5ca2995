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
~10^8 accounts on this machine; at 1.4e9 accounts it would not fit. Method ``thread``
(``engine.copy_on_update``) writes from the live arrays instead: no fork, memory bounded by the
updates made while it writes; ``auto`` picks it above ``AUTO_THREAD_BYTES`` of state.

When a child finishes, snapshots beyond ``snapshot_keep`` (newest first) are deleted and the
journal's segments are retired up to the watermark: the lowest of the oldest retained snapshot's
journal entry (so falling back to the previous snapshot still finds its entries) and each durable
consumer's durable entry (``Hook.durable_journal_seq``: the trove). The audit chain's file is
fsynced by every snapshot, so the snapshot is its durable point too.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.copy_on_update import CopyOnUpdate
from engine.journal import Journal, JournalHeader
from engine.ledger import Ledger
from engine.server.config import ServerConfig
from engine.snapshot import (
    CHUNK_BYTES,
    PARTIAL,
    Part,
    SnapshotSchedule,
    StateOwner,
    capture,
    list_snapshots,
    write_snapshot,
)


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


#: ``snapshot_method="auto"``: fork below this much state, copy-on-update above (fork's stall
#: grows with the process's memory: ~2-11 ms at 15 MiB of state, 17-86 ms at 1.5 GiB, measured).
AUTO_THREAD_BYTES = 256 << 20
#: Chunks the sequencer copies per batch and per idle tick under copy-on-update (4 MiB each).
_FEED_CHUNKS = 1
_TICK_S = 0.002


class Snapshotter:
    """Takes the periodic snapshots of one server, and retires journal segments after each.

    ``method``: ``fork`` (a copy-on-write child) or ``thread`` (``engine.copy_on_update``: a writer
    thread, the sequencer copies chunks between batches and saves values before updating them).
    """

    def __init__(
        self,
        directory: Path,
        schedule: SnapshotSchedule,
        keep: int,
        ledger: Ledger,
        journal: Journal,
        header: JournalHeader,
        *,
        method: str = "fork",
        log: Callable[[str], None] | None = None,
    ) -> None:
        if method not in ("fork", "thread"):
            raise ValueError(f"snapshot method must be fork or thread, got {method!r}")
        self.directory, self.schedule, self.keep, self.method = directory, schedule, keep, method
        self.ledger, self.journal, self.header, self.log = ledger, journal, header, log
        directory.mkdir(parents=True, exist_ok=True)
        self._last_payments = ledger.clock.payments
        self._last_s = time.monotonic()
        self._child: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._cou: CopyOnUpdate | None = None
        self._seq = 0
        self._started = 0.0
        #: The event loop's ``call_later``: under copy-on-update, idle ticks keep the copy going.
        self.call_later: Callable[[float, Callable[[], None]], Any] | None = None
        self._tick_handle: Any = None
        self._fed_at = 0.0
        self.taken = self.failed = 0
        self.stalls_ns: list[int] = []
        self.last_write_s = 0.0
        self.last_bytes = 0
        self.last_seq = 0
        self.last_undo_bytes_max = 0
        #: Under copy-on-update, the longest the sequencer spent on one step of it between batches
        #: (saving a batch's accounts, or copying a chunk for the writer).
        self.step_ns_max = 0
        self.watermark_seq = 0

    @classmethod
    def for_config(
        cls, config: ServerConfig, ledger: Ledger, journal: Journal, *, log: Callable[[str], None] | None = None
    ) -> Snapshotter:
        """The snapshotter a server with ``config`` runs (``snapshot_method`` auto resolved by state size)."""
        method = config.snapshot_method
        if method == "auto":
            method = "thread" if ledger.state_bytes() > AUTO_THREAD_BYTES else "fork"
        return cls(
            Path(config.snapshot_directory),
            SnapshotSchedule.parse(config.snapshot_every),
            config.snapshot_keep,
            ledger,
            journal,
            config.journal_header(),
            method=method,
            log=log,
        )

    @property
    def in_progress(self) -> bool:
        return self._child is not None or self._thread is not None

    def due(self) -> bool:
        s = self.schedule
        payments = s.every_payments and self.ledger.clock.payments - self._last_payments >= s.every_payments
        seconds = s.every_s and time.monotonic() - self._last_s >= s.every_s
        return bool(payments or seconds)

    def maybe_start(self) -> None:
        """Between batches: feed or reap a snapshot in progress; start the next one if one is due."""
        self._feed()
        self.poll()
        if not self.in_progress and self.schedule.enabled and self.due():
            try:
                self.start()
            except OSError as exc:  # fork or thread refused (memory, process limits): retried when next due
                self.failed += 1
                self._cou = self._thread = None
                self._last_payments, self._last_s = self.ledger.clock.payments, time.monotonic()
                if self.log is not None:
                    self.log(f"snapshot could not start ({exc}); the next one is tried when due")

    def before_batch(self, batch: np.ndarray) -> None:
        """Under copy-on-update, before a batch is applied: save what it may modify (its payers and
        payees; all of a hook's arrays if the hook says it will touch them all)."""
        cou = self._cou
        if cou is None or cou.copied_all:
            return
        t0 = time.perf_counter_ns()
        accounts = np.unique(np.concatenate([batch["payer"], batch["payee"]]))
        cou.before_update(accounts[accounts < self.ledger.accounts])
        everything = frozenset(h.name for h in self.ledger.hooks if h.snapshot_touches_all(batch))
        if everything:
            cou.before_update(None, everything)
        for hook in self.ledger.hooks:
            for owner, others in hook.snapshot_touches_others(batch).items():
                cou.before_update(np.unique(others), frozenset((owner,)))
        self.step_ns_max = max(self.step_ns_max, time.perf_counter_ns() - t0)

    def _feed(self) -> None:
        """Copy the next chunk for the writer thread (under copy-on-update), timed: a sequencer stall."""
        if self._cou is not None:
            t0 = time.perf_counter_ns()
            self._cou.feed(_FEED_CHUNKS)
            self.step_ns_max = max(self.step_ns_max, time.perf_counter_ns() - t0)
            self._fed_at = time.monotonic()

    def before_admin(self, accounts: np.ndarray) -> None:
        """Under copy-on-update, before an admin operation modifies ``accounts``."""
        if self._cou is not None and not self._cou.copied_all:
            cou_accounts = np.unique(accounts.astype(np.int64))
            self._cou.before_update(cou_accounts[(cou_accounts >= 0) & (cou_accounts < self.ledger.accounts)])

    def start(self) -> None:
        """Capture, then fork or start the writer thread (the sequencer's stall is this call)."""
        t0 = time.perf_counter_ns()
        hooks = self.ledger.hooks
        for hook in hooks:
            hook.prepare_snapshot()
        parts = capture(state_owners(self.ledger))
        seq = self.journal.seq
        outputs = [p for h in hooks for p in h.output_files()]
        if self.method == "fork":
            pid = os.fork()
            if pid == 0:  # the child: arrays, files and C code only, then _exit (no atexit, no finalizers)
                self._child_main(seq, parts, outputs)
            self._child = pid
        else:
            self._start_thread(seq, parts, outputs)
        self.stalls_ns.append(time.perf_counter_ns() - t0)
        self._seq, self._started = seq, time.monotonic()
        self._last_payments = self.ledger.clock.payments
        self._last_s = time.monotonic()

    def _start_thread(self, seq: int, parts: list[Part], outputs: list[Path]) -> None:
        per_account = {(name, a) for name, owner in state_owners(self.ledger) for a in owner.per_account_arrays()}
        cou = self._cou = CopyOnUpdate(parts, per_account, CHUNK_BYTES)
        journal_fd = os.dup(self.journal.fileno())  # the segment holding entry ``seq`` (it may roll meanwhile)
        self._thread_error = None

        def write() -> None:
            try:
                write_snapshot(
                    self.directory,
                    seq,
                    self.header,
                    cou.parts,
                    sync_fds=[journal_fd],
                    sync_paths=outputs,
                    read_chunk=cou.read_chunk,
                )
            except BaseException as exc:  # reported by poll(); the sequencer goes on
                self._thread_error = exc
            finally:
                os.close(journal_fd)

        self._thread = threading.Thread(target=write, name="snapshot-writer", daemon=True)
        self._thread.start()
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        if self.call_later is not None and self._tick_handle is None:
            self._tick_handle = self.call_later(_TICK_S, self._tick)

    def _tick(self) -> None:
        """A quiet server's copy-on-update goes on between batches by this timer."""
        self._tick_handle = None
        if self._cou is not None:
            if time.monotonic() - self._fed_at >= _TICK_S:  # under load the batches feed it (one chunk each)
                self._feed()
            self.poll()
        if self._thread is not None:
            self._schedule_tick()

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
        """Reap a finished snapshot (``wait``: until it finishes); then prune and retire."""
        if self._child is not None:
            pid, status = os.waitpid(self._child, 0 if wait else os.WNOHANG)
            if pid == 0:
                return
            self._child = None
            self._finish(os.waitstatus_to_exitcode(status) == 0, pid, f"child status {status}")
        elif self._thread is not None:
            cou = self._cou
            assert cou is not None
            while wait and not cou.copied_all:
                if not cou.feed(len(cou.plan)):
                    time.sleep(0.001)  # the writer's queue is full
                if not self._thread.is_alive():
                    break
            if wait:
                self._thread.join()
            if self._thread.is_alive():
                return
            self._thread = self._cou = None
            self.last_undo_bytes_max = cou.undo_bytes_max
            error = self._thread_error
            self._finish(error is None, os.getpid(), f"{type(error).__name__}: {error}")

    def _finish(self, ok: bool, pid: int, why: str) -> None:
        self.last_write_s = time.monotonic() - self._started
        if not ok:
            self.failed += 1
            for stale in self.directory.glob(f"*{PARTIAL}-{pid}"):
                stale.unlink(missing_ok=True)
            if self.log is not None:
                self.log(f"snapshot at journal entry {self._seq} FAILED ({why}); will retry")
            return
        self.taken += 1
        self.last_seq = self._seq
        snaps = list_snapshots(self.directory)
        self.last_bytes = next((p.stat().st_size for s, p in snaps if s == self._seq), 0)
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
        """Finish a snapshot being written (it is consistent and useful)."""
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        self.poll(wait=True)

    def stats(self) -> dict[str, Any]:
        stalls = self.stalls_ns or [0]
        return {
            "directory": str(self.directory),
            "every_payments": self.schedule.every_payments,
            "every_s": self.schedule.every_s,
            "taken": self.taken,
            "failed": self.failed,
            "method": self.method,
            "in_progress": self.in_progress,
            "undo_bytes_max": self.last_undo_bytes_max,
            "step_ms_max": self.step_ns_max / 1e6,
            "last_seq": self.last_seq,
            "last_bytes": self.last_bytes,
            "last_write_s": self.last_write_s,
            "stall_ms_last": stalls[-1] / 1e6,
            "stall_ms_max": max(stalls) / 1e6,
            "watermark_seq": self.watermark_seq,
            "kept": len(list_snapshots(self.directory)),
        }
