"""The trove in a child process: the sequencer's process only copies batches into shared memory.

Why: Parquet encoding, DuckDB's sorts and the writer's Python glue hold the GIL for long
stretches; run as threads beside the sequencer they cut ``cbdc-bench engine --profile
surveillance`` from 2.3M to 0.7-0.96M transfers/s on a 2-core machine. In a child process they
run on the other core and the sequencer pays one memcpy per batch. The child is a fresh
interpreter (``subprocess``, ``python -c``): a threaded server is never forked, and unlike
``multiprocessing``'s spawn it does not re-run the parent's main module (a script without a
``__main__`` guard, pytest, the ``cbdc-bench`` entry point).

Hand-over: a ring of ``ring_slots`` slots of ``SLOT_ROWS`` records in shared memory (a
``memfd`` mapped by both) and two pipes that carry one byte per slot: "filled" (parent to child)
and "freed" (child to parent). ``append`` copies a batch into one or more slots (a batch larger
than a slot spans several; the child reassembles it before its trove sees it, so a flush never
splits a batch); the child's feeder thread copies each slot out, frees it and hands the batch to
the child's ``Trove`` (its writer, flusher and compactor threads, unchanged). The parent counts its free
slots itself and reads the "freed" pipe only when it has none left.

Back-pressure, when the trove falls behind: the ring holds ``ring_slots`` slots and the child's
trove queue ``queue_batches`` batches; when both are full, ``append`` waits for a free slot, so
the sequencer slows to the trove's pace. No row is ever dropped for being late: the waits are
counted (``append_waits``, ``append_wait_ns``) and the backlog (rows handed over and not yet
durable: ``backlog_rows``, ``backlog_rows_peak``) is in ``stats()``.

A vanished child (killed, crashed) is noticed by the next ``append`` (the process is not alive),
``flush`` or ``stats`` (the control pipe is closed): ``failure`` names the pid and how it ended,
every row from then on is counted in ``rows_not_persisted``, and ``append`` raises
``TroveStopped``, which the hook turns into a counted, reported stop, never a server crash. The
journal, if on, still holds the rows: a restart rebuilds them.

Shared-memory status words (the child's failure flag, watermark and rows done) let the parent
see the child's progress without a round trip.

CPU: the child's CPU time (all its threads) is read from ``/proc/<pid>/stat`` (at most every
``_CPU_POLL_S``) and is the hook's ``background_ns``; at close the child reports its exact total.

Control: a duplex pipe carries requests (flush, stats, snapshot, release, close), one at a time
under a lock. If the pipe closes without a close request (the parent died), the child exits at
once without writing more: what it had not made durable is past the trove's watermark, so a
restart with the journal rebuilds it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.codes import CODE_DTYPE
from engine.records import TRANSFER_DTYPE
from engine.trove.config import TroveConfig
from engine.trove.manifest import Segment, load_manifest
from engine.trove.store import Trove, TroveFeed, TroveStopped, manifest_stats

#: Records per ring slot: one default engine batch; larger batches span several slots.
SLOT_ROWS = 8192
#: Per slot: a header (batch_seq, first row, rows in this slot, rows in the batch), the records,
#: then their result codes.
_HEADER = np.dtype([("batch_seq", "<i8"), ("first", "<i8"), ("rows", "<i8"), ("batch_rows", "<i8")])
_RECORDS_AT = _HEADER.itemsize
_CODES_AT = _RECORDS_AT + SLOT_ROWS * TRANSFER_DTYPE.itemsize
SLOT_BYTES = _CODES_AT + SLOT_ROWS * CODE_DTYPE.itemsize
#: Status words the child writes and the parent reads without a round trip (aligned int64 stores),
#: at the start of the shared memory; the ring follows.
_FAILED, _DURABLE_SEQ, _ROWS_DONE = range(3)
_STATUS_BYTES = 64
_CHILD = "from engine.trove.process import child_entry; child_entry()"
#: How often a waiting parent checks that the child is alive; how stale ``background_ns`` may be.
_LIVENESS_S = 0.2
_CPU_POLL_S = 0.25


class TroveProcess(TroveFeed):
    """A trove written by a child process; the same surface as ``Trove`` for the hook and queries."""

    def __init__(self, config: TroveConfig, root: Path, *, temporary: bool, deep_check: bool) -> None:
        self.config = config
        self.root = root
        self.temporary = temporary
        self.failure = ""
        self.problems: list[str] = []
        self.durable_through_seq = 0
        self._gone = False  # the child vanished (not a stop it reported itself)
        self._slots = config.ring_slots
        self._free_slots = self._slots
        shm_fd = os.memfd_create("cbdc-trove-ring")
        os.ftruncate(shm_fd, _STATUS_BYTES + self._slots * SLOT_BYTES)
        self._shm = mmap.mmap(shm_fd, _STATUS_BYTES + self._slots * SLOT_BYTES)
        self._status = np.frombuffer(self._shm, dtype=np.int64, count=_STATUS_BYTES // 8)
        self._ring = np.frombuffer(self._shm, dtype=np.uint8, offset=_STATUS_BYTES)
        filled_r, self._filled_w = os.pipe()
        self._freed_r, freed_w = os.pipe()
        os.set_blocking(self._freed_r, False)
        sock, child_sock = socket.socketpair()
        self._conn = Connection(sock.detach())
        child_fds = (shm_fd, filled_r, freed_w, child_sock.fileno())
        # The child imports this package however the parent found it (installed or a checkout).
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            **child_malloc_env(),
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        }
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, *map(str, child_fds)],
                pass_fds=child_fds,
                env=env,
                close_fds=True,
                stdout=subprocess.DEVNULL,  # the server's stdout is its own ("listening on ..."); errors go to stderr
            )
        finally:
            for fd in child_fds[:3]:
                os.close(fd)
            child_sock.close()
        self._conn.send((msgspec.json.encode(msgspec.structs.replace(config, dir=str(root))), deep_check, self._slots))
        self._lock = threading.Lock()
        self._slots_sent = 0
        self._rows_sent = 0
        self._closed = False
        self._child_stats: dict[str, Any] = {}
        self._cpu_ns = 0
        self._cpu_read_at = -1.0
        self._final_cpu_ns: int | None = None
        self._runqueue_wait_ns = 0
        self.counters = {"rows_not_persisted": 0, "append_waits": 0, "append_wait_ns": 0, "backlog_rows_peak": 0}

    @classmethod
    def open(cls, config: TroveConfig, *, deep_check: bool = False) -> TroveProcess:
        """Start the child, which opens (or creates) the trove at ``config.dir`` (temporary if "").

        Raises ValueError with the child's message if the trove cannot be opened (partitioning
        differs, the disk cannot hold what is configured...).
        """
        temporary = not config.dir
        root = Path(tempfile.mkdtemp(prefix="cbdc-trove-")) if temporary else Path(config.dir)
        trove = cls(config, root, temporary=temporary, deep_check=deep_check)
        if temporary:  # removed at exit even if nobody calls close()
            weakref.finalize(trove, shutil.rmtree, root, ignore_errors=True)
        try:
            info = trove._answer()
        except BaseException:
            trove.close()
            raise
        trove.problems = list(info["problems"])
        trove.durable_through_seq = int(info["durable_through_seq"])
        return trove

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _alive(self) -> bool:
        return self._proc.poll() is None

    # ---- the sequencer's side ----------------------------------------------------------------

    def append(self, batch: np.ndarray, codes: np.ndarray, batch_seq: int) -> None:
        """Copy a batch into the ring; waits while the ring is full (back-pressure, never a drop)."""
        n = len(batch)
        if not self.failure and self._status[_FAILED]:
            self._fetch_failure()
        if not self.failure and not self._alive():
            self._vanished()
        if self.failure:
            self.counters["rows_not_persisted"] += n
            raise TroveStopped(self.failure)
        records = np.ascontiguousarray(batch).view(np.uint8).reshape(-1)
        codes_u8 = np.ascontiguousarray(codes, dtype=CODE_DTYPE)
        width = TRANSFER_DTYPE.itemsize
        try:
            for first in range(0, max(n, 1), SLOT_ROWS):
                k = min(SLOT_ROWS, n - first)
                if not self._take_slot():
                    self.counters["rows_not_persisted"] += n
                    raise TroveStopped(self.failure)
                base = (self._slots_sent % self._slots) * SLOT_BYTES
                self._ring[base : base + _RECORDS_AT].view(_HEADER)[0] = (batch_seq, first, k, n)
                at = base + _RECORDS_AT
                self._ring[at : at + k * width] = records[first * width : (first + k) * width]
                self._ring[base + _CODES_AT : base + _CODES_AT + k] = codes_u8[first : first + k]
                os.write(self._filled_w, b"\x01")  # never blocks: at most ring_slots bytes are in flight
                self._slots_sent += 1
        except OSError as exc:  # a pipe's other end closed under us: the child died mid-append
            if self._alive():
                raise
            self._vanished()
            self.counters["rows_not_persisted"] += n
            raise TroveStopped(self.failure) from exc
        self._rows_sent += n
        backlog = self.backlog_rows
        if backlog > self.counters["backlog_rows_peak"]:
            self.counters["backlog_rows_peak"] = backlog

    def _take_slot(self) -> bool:
        """A free slot (waiting, counted, while the child is behind); False if the child is gone."""
        if not self._free_slots:
            self._reclaim()
        if not self._free_slots:
            t0 = time.perf_counter_ns()
            self.counters["append_waits"] += 1
            try:
                while not self._free_slots:
                    if not select.select([self._freed_r], [], [], _LIVENESS_S)[0] and not self._alive():
                        self._vanished()
                        return False
                    self._reclaim()
            finally:
                self.counters["append_wait_ns"] += time.perf_counter_ns() - t0
        self._free_slots -= 1
        return True

    def _reclaim(self) -> None:
        """Count the slots the child has freed since the last look (one byte each)."""
        with contextlib.suppress(BlockingIOError):
            self._free_slots += len(os.read(self._freed_r, self._slots))

    @property
    def backlog_rows(self) -> int:
        """Rows handed to the trove and not yet durable in a segment (in the ring or the child)."""
        return self._rows_sent - int(self._status[_ROWS_DONE])

    def durable_seq(self) -> int:
        """Every journal entry up to this one is in the trove (``Trove.durable_seq``, as the child last
        committed it)."""
        return int(self._status[_DURABLE_SEQ])

    def flush(self, *, compact: bool = False) -> None:
        """Return once everything appended so far is durable (and, if ``compact``, fully merged)."""
        self._call("flush", self._slots_sent, compact)

    def compact_all(self) -> None:
        self.flush(compact=True)

    def compact_due(self) -> None:
        """``Trove.compact_due`` in the child (after everything appended so far is durable)."""
        self._call("flush", self._slots_sent, False)
        self._call("compact_due")

    # ---- reading -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[list[Segment]]:
        """The committed segments; the child deletes none of their files until the block ends."""
        token, segments = self._call("snapshot")
        try:
            yield segments
        finally:
            with contextlib.suppress(TroveStopped):
                self._call("release", token)

    def stats(self) -> dict[str, Any]:
        """The child trove's figures (the last known ones if it is gone or closed), with the hand-over's."""
        if not self._closed and not self.failure:
            with contextlib.suppress(TroveStopped):
                self._child_stats = self._call("stats")
        out = dict(self._child_stats)
        if self._gone:  # what the trove holds is what its last committed manifest lists
            with contextlib.suppress(OSError, ValueError):
                if (manifest := load_manifest(self.root)) is not None:
                    out.update(manifest_stats(manifest, manifest.segments, self.root))
        rows_not_persisted = out.get("rows_not_persisted", 0) + self.counters["rows_not_persisted"]
        out.update(self.counters)
        out.update(
            dir=str(self.root),
            temporary=self.temporary,
            process_pid=self.pid,
            process_cpu_ns=self.background_cpu_ns(),
            # Runnable and not running (all its threads): starvation on a busy machine, not its cost.
            process_runqueue_wait_ns=(
                self._runqueue_wait_ns if self._closed or self._gone else process_runqueue_wait_ns(self.pid)
            ),
            rows_not_persisted=rows_not_persisted,
            backlog_rows=self.backlog_rows,
            # The child's own queue waits (its feeder waiting on its writer), apart from the sequencer's.
            writer_queue_wait_ns=self._child_stats.get("append_wait_ns", 0),
            failure=self.failure or out.get("failure", ""),
            problems=list(self.problems),
        )
        return out

    def background_cpu_ns(self) -> int:
        """CPU time of the child process so far (all its threads): the hook's background cost."""
        if self._final_cpu_ns is not None:
            return self._final_cpu_ns
        if self._gone:  # its pid may be reused: the last figure read stands
            return self._cpu_ns
        now = time.monotonic()
        if now - self._cpu_read_at >= _CPU_POLL_S:
            self._cpu_read_at = now
            self._cpu_ns = max(self._cpu_ns, process_cpu_ns(self.pid))
        return self._cpu_ns

    # ---- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Write everything appended, stop the child, delete the directory if it is temporary."""
        if self._closed:
            return
        os.close(self._filled_w)  # the child's feeder ends after the last slot sent
        if self._alive() and not self._gone:
            with contextlib.suppress(TroveStopped):
                final = self._call("close", self._slots_sent)
                self._child_stats = final["stats"]
                self._final_cpu_ns = int(final["cpu_ns"])
                self._runqueue_wait_ns = int(final["runqueue_wait_ns"])
        self._closed = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=30)
        if self._alive():  # it did not finish closing: it is not left running
            self._proc.kill()
            self._proc.wait()
        if self._final_cpu_ns is None:
            self._final_cpu_ns = self._cpu_ns
        self._conn.close()
        os.close(self._freed_r)
        # Views first (the mapping cannot close under them); the status words stay readable.
        self._status = self._status.copy()
        del self._ring
        self._shm.close()
        if self.temporary and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- the control pipe --------------------------------------------------------------------

    def _call(self, *request: Any) -> Any:
        """Send a request and wait for its answer; TroveStopped if the child is gone or stopped."""
        if self._closed:
            raise TroveStopped(self.failure or f"trove {self.root} is closed")
        with self._lock:
            try:
                self._conn.send(request)
            except OSError:
                self._vanished()
                raise TroveStopped(self.failure) from None
            return self._answer()

    def _answer(self) -> Any:
        """The child's next answer ("ok", value) / ("stopped", why) / ("error", why)."""
        while not self._conn.poll(_LIVENESS_S):
            if not self._alive():
                break
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            self._vanished()
            raise TroveStopped(self.failure) from None
        if kind == "error":
            raise ValueError(value)
        if kind == "stopped":
            self.failure = value
            raise TroveStopped(value)
        return value

    def _fetch_failure(self) -> None:
        """The child's trove stopped (disk full, write error): take its message."""
        with contextlib.suppress(TroveStopped):
            self._child_stats = self._call("stats")
        self.failure = self.failure or self._child_stats.get("failure", "") or f"trove {self.root} stopped ingesting"

    def _vanished(self) -> None:
        if self._gone:
            return
        self._gone = True
        # Rows handed over and not yet durable died with the child: counted, never silently lost.
        self.counters["rows_not_persisted"] += self.backlog_rows
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=1)
        code = self._proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        self.failure = (
            f"the trove process (pid {self.pid}) writing {self.root} {how}; ingest stopped, rows from here on are "
            "counted in rows_not_persisted. The journal, if on, still has them: restart the server to rebuild them"
        )


def child_malloc_env() -> dict[str, str]:
    """glibc malloc (and OpenBLAS) settings for the child (the caller's environment overrides them).

    Why: the child allocates and frees a memtable's worth of numpy columns (~250 MB) per flush and
    per merge step, in arrays of 1-32 MB. glibc serves them with fresh ``mmap``s and returns them
    on ``free``, so every flush faults its memory in again (numpy asks for huge pages: a 2 MB
    page zeroed per fault), ~57,000 faults per 2^22-row memtable. One arena that keeps what it
    freed (no ``mmap`` per array, no trim) reuses the pages: 300-1,000 faults, the writer's CPU
    ~20% less per row (shared machine, alternated, steady memtables: 865-1,109 -> 622-903 ns/row),
    a final merge's ~9% (1,002-1,235 -> 867-1,209 ns/row, within the noise), the same peak RSS
    (the flush's peak, now kept for the next flush instead of returned).

    pyarrow's buffers (a table's ``take``, the pages a merge reads, a writer's pages) come from its
    own pool, mimalloc by default, which returns freed memory to the kernel after ~10 ms, so each
    flush and merge faulted its Arrow buffers in again: ~4,800 faults per 2^22-row memtable after
    the first, ~5,700-10,400 per final merge of 8 x 2^19 rows. ``ARROW_DEFAULT_MEMORY_POOL=system``
    puts them in glibc's arena above, kept: 0-200 faults a memtable or merge (shared machine,
    ``/tmp`` harness, 2026-12-04; the CPU saved is within a few percent, see ``TroveConfig``).
    """
    return {
        # No BLAS thread pool: the trove does no linear algebra, and numpy's import would start
        # OpenBLAS's workers before the child lowers its priority (``renice_threads``).
        "OPENBLAS_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 34),
        "ARROW_DEFAULT_MEMORY_POOL": "system",
    }


def renice_threads(increment: int) -> None:
    """Lower every thread of this process by ``increment`` niceness (capped at 19).

    Why not ``os.nice`` alone: Linux niceness is per thread, and ``os.nice`` changes only the
    calling one. Threads made later inherit their creator's (the writer, flusher, compactor,
    DuckDB's and pyarrow's pools are all made by reniced threads), but one made *before* stays at
    the parent's: importing numpy starts OpenBLAS's worker (one on a 2-core machine), which was
    measured at nice 0 in every child (``/proc/PID/task/*/stat``, 2026-12-04).
    ``child_malloc_env`` now also asks OpenBLAS for no pool; this catches whatever else is there.
    """
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except FileNotFoundError:  # no /proc: the calling thread only
        os.nice(increment)
        return
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.setpriority(os.PRIO_PROCESS, tid, max(target, os.getpriority(os.PRIO_PROCESS, tid)))


def process_runqueue_wait_ns(pid: int) -> int:
    """Time the live threads of process ``pid`` spent runnable but waiting for a CPU (``schedstat``).

    Why: on a busy machine the child at nice 10 gets the CPU last; this says how much of its wall
    time went to waiting for one, apart from its own CPU time (``process_cpu_ns``).
    """
    return sum(_runqueue_wait_ns(f) for f in Path(f"/proc/{pid}/task").glob("*/schedstat"))


def _runqueue_wait_ns(schedstat: Path) -> int:
    """The second field of a thread's ``schedstat``: ns runnable but not running (0 if gone)."""
    try:
        return int(schedstat.read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def process_cpu_ns(pid: int) -> int:
    """User + system CPU time of process ``pid`` (all threads) from /proc; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks * 10**9 // os.sysconf("SC_CLK_TCK")


# ---- the child -------------------------------------------------------------------------------


class _Feeder:
    """The child's thread that moves batches from the ring into its trove, in order."""

    def __init__(self, trove: Trove, shm: mmap.mmap, filled_r: int, freed_w: int, slots: int) -> None:
        self.trove = trove
        self.status = np.frombuffer(shm, dtype=np.int64, count=_STATUS_BYTES // 8)
        self.ring = np.frombuffer(shm, dtype=np.uint8, offset=_STATUS_BYTES)
        self.filled_r = filled_r
        self.freed_w = freed_w
        self.slots = slots
        self.taken = 0
        #: This thread's wait for a CPU, noted as it ends (its /proc entry goes with it).
        self.runqueue_wait_ns = 0
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="trove-feeder", daemon=True)

    def _loop(self) -> None:
        """Until the parent closes the "filled" pipe: one slot per byte read."""
        width = TRANSFER_DTYPE.itemsize
        records = codes = np.empty(0, dtype=np.uint8)
        while filled := len(os.read(self.filled_r, self.slots)):
            for _ in range(filled):
                base = (self.taken % self.slots) * SLOT_BYTES
                seq, first, k, n = (int(v) for v in self.ring[base : base + _RECORDS_AT].view(_HEADER)[0].item())
                if first == 0:  # a new batch: copied once, straight into arrays the trove keeps
                    records = np.empty(n * width, dtype=np.uint8)
                    codes = np.empty(n, dtype=CODE_DTYPE)
                records[first * width : (first + k) * width] = self.ring[
                    base + _RECORDS_AT : base + _RECORDS_AT + k * width
                ]
                codes[first : first + k] = self.ring[base + _CODES_AT : base + _CODES_AT + k]
                os.write(self.freed_w, b"\x01")
                if first + k >= n:
                    try:
                        self.trove.append_owned(records.view(TRANSFER_DTYPE), codes, seq)
                    except TroveStopped:
                        self.status[_FAILED] = 1  # counted by the trove; the parent fetches the message
                with self.cond:
                    self.taken += 1
                    self.cond.notify_all()
        self.runqueue_wait_ns = _runqueue_wait_ns(Path("/proc/thread-self/schedstat"))

    def drain(self, slots_sent: int) -> None:
        """Wait until the feeder has handed over every slot the parent had sent."""
        with self.cond:
            self.cond.wait_for(lambda: self.taken >= slots_sent)


def child_entry() -> None:
    """``python -c`` entry of the child: its descriptors are the command's arguments."""
    shm_fd, filled_r, freed_w, sock_fd = (int(a) for a in sys.argv[1:5])
    child_main(Connection(sock_fd), mmap.mmap(shm_fd, 0), filled_r, freed_w)


def child_main(conn: Connection, shm: mmap.mmap, filled_r: int, freed_w: int) -> None:
    """The child process: open the trove, feed it from the ring, answer the parent's requests."""
    # A Ctrl-C reaches the whole process group; the parent decides when the trove closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config_json, deep_check, slots = conn.recv()
    config = msgspec.json.decode(config_json, type=TroveConfig)
    # Background work: on a busy machine the sequencer gets the CPU first, and the trove slows
    # it only through back-pressure (measured with other work on both cores: 0.34-0.45M/s at
    # nice 10, 0.24-0.34M/s at nice 0, in one session).
    renice_threads(config.process_nice)
    try:
        trove = Trove.open(config, deep_check=deep_check)
    except (ValueError, OSError) as exc:
        conn.send(("error", str(exc)))
        return
    feeder = _Feeder(trove, shm, filled_r, freed_w, slots)
    status = feeder.status
    status[_DURABLE_SEQ] = trove.durable_seq()

    def on_durable(durable_seq: int, rows_done: int) -> None:
        status[_ROWS_DONE] = rows_done
        status[_DURABLE_SEQ] = durable_seq

    trove.on_durable = on_durable
    feeder.thread.start()
    conn.send(("ready", {"problems": trove.problems, "durable_through_seq": trove.durable_through_seq}))
    snapshots: dict[int, contextlib.AbstractContextManager[list[Segment]]] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone: write nothing more (the journal rebuilds the rest)
        try:
            match request:
                case ("flush", slots_sent, compact):
                    feeder.drain(slots_sent)
                    trove.flush(compact=compact)
                    conn.send(("ok", None))
                case ("compact_due",):
                    trove.compact_due()
                    conn.send(("ok", None))
                case ("stats",):
                    conn.send(("ok", trove.stats()))
                case ("snapshot",):
                    token = max(snapshots, default=0) + 1
                    snapshots[token] = trove.snapshot()
                    conn.send(("ok", (token, snapshots[token].__enter__())))
                case ("release", token):
                    snapshots.pop(token).__exit__(None, None, None)
                    conn.send(("ok", None))
                case ("close", slots_sent):
                    feeder.thread.join()  # the parent closed the "filled" pipe: the feeder ends after the last slot
                    # Read while the writer and compactor threads live (a thread's figure goes with it);
                    # the feeder noted its own as it ended. The final flush's wait is not in it.
                    waited_ns = process_runqueue_wait_ns(os.getpid()) + feeder.runqueue_wait_ns
                    trove.close()
                    final = {"stats": trove.stats(), "cpu_ns": time.process_time_ns(), "runqueue_wait_ns": waited_ns}
                    conn.send(("ok", final))
                    return
                case _:
                    conn.send(("error", f"unknown trove request {request!r}"))
        except TroveStopped as exc:
            conn.send(("stopped", str(exc)))
