"""surveillance_log: every payment, with its location and device metadata, into a data trove.

"Every payment, with device and location metadata, lands in a central data trove" (docs/design.md).
Every transfer of every applied batch, accepted or rejected, is kept with its result code.

Two modes:

* ``trove`` (the default, and what the ``surveillance`` and ``full`` profiles run): the
  persistent, partitioned Parquet trove of ``engine.trove``, compacted by account and queried
  with DuckDB. ``observe`` only hands the batch to the trove's writer thread; the writer's and
  compactor's CPU time is charged to this hook (``background_ns``). ``trove.dir = ""`` writes to
  a temporary directory deleted at close (the cost is measured, the data not kept).
* ``buffer``: a bounded in-memory columnar ring (one numpy array per field), the oldest rows
  overwritten and counted as dropped, optionally also appended to a file of packed LOG_DTYPE
  records. It is a *buffer*, not a trove: no profile uses it; it is kept as a cheap comparison.

Batches refused whole with HOOK_ERROR are not observed by any hook, so they are not logged.
Observe is deferred by default: logging is off the latency path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec
import numpy as np

from engine.hooks.base import Hook, LedgerView
from engine.records import MAX_BATCH, TRANSFER_DTYPE
from engine.trove.config import TroveConfig
from engine.trove.store import TroveStopped

if TYPE_CHECKING:
    from engine.trove.process import TroveProcess
    from engine.trove.store import Trove

#: One logged row: the transfer record followed by its result code, packed (49 bytes).
LOG_DTYPE = np.dtype([*((n, TRANSFER_DTYPE[n]) for n in TRANSFER_DTYPE.names or ()), ("code", "u1")])
MODES = ("trove", "buffer")


class SurveillanceLogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: "trove" (persistent Parquet trove) or "buffer" (bounded memory ring, not a trove).
    mode: str = "trove"
    trove: TroveConfig = TroveConfig()
    #: buffer mode: rows kept in memory (oldest overwritten first). 2**21 rows is about 100 MB.
    capacity: int = 1 << 21
    #: buffer mode: append-only file of LOG_DTYPE rows; "" keeps the buffer in memory only.
    path: str = ""
    deferred: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"surveillance_log.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not MAX_BATCH <= self.capacity <= 1 << 32:
            raise ValueError(f"capacity must be in {MAX_BATCH}..{1 << 32} rows, got {self.capacity}")


class SurveillanceLog(Hook):
    name = "surveillance_log"
    snapshot_scalars = ("rows_seen", "batches_seen")

    def __init__(self, config: SurveillanceLogConfig | None = None) -> None:
        self.config = config or SurveillanceLogConfig()
        self.deferred = self.config.deferred
        self.rows_seen = 0
        self.batches_seen = 0
        self.trove: Trove | TroveProcess | None = None
        self._journal_seq = 0
        self._seq_base = 0
        self._ring: RingBuffer | None = RingBuffer(self.config) if self.config.mode == "buffer" else None

    def output_files(self) -> list[Path]:
        # With a journal, the server hands the journal numbers (live and replayed) to
        # ``note_journal_seq``: the trove keeps what it holds and rebuilds only what it lacks, so
        # it is not set aside. Without one, it is an output regenerated like any other.
        if self._ring is not None:
            return [Path(self.config.path)] if self.config.path else []
        return [Path(self.config.trove.dir)] if self.config.trove.dir and not self.journalled else []

    def attach(self, ledger: LedgerView) -> None:
        if self._ring is not None:
            self._ring.open()
        else:
            from engine.trove.process import TroveProcess
            from engine.trove.store import Trove

            cfg = self.config.trove
            self.trove = TroveProcess.open(cfg) if cfg.process else Trove.open(cfg)
            # Without journal numbers, batches are numbered on from what the trove already holds.
            self._seq_base = self.trove.durable_through_seq

    @property
    def snapshot_arrays(self) -> tuple[str, ...] | None:  # type: ignore[override]
        # The trove is its own durable store (a journal consumer, ``durable_journal_seq``); the
        # buffer's ring is state, but its optional file is not continued from a snapshot.
        return None if self._ring is not None and self.config.path else ()

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {} if self._ring is None else {f"ring.{n}": c for n, c in self._ring.columns.items()}

    def state_scalars(self) -> dict[str, Any]:
        ring = {} if self._ring is None else {"ring.rows_seen": self._ring.rows_seen}
        return super().state_scalars() | ring

    def restore_scalars(self, scalars: dict[str, Any]) -> None:
        super().restore_scalars(scalars)
        if self._ring is not None:
            self._ring.rows_seen = scalars["ring.rows_seen"]

    def durable_journal_seq(self) -> int | None:
        """The trove's watermark: every journal entry up to this one is in the trove (None in buffer
        mode or without a journal). Journal segments wholly at or below it may be deleted as far as
        this hook is concerned; the trove rebuilds what it lacks from the journal."""
        if self.trove is None or not self.journalled:
            return None
        return self.trove.durable_seq()

    def replay_output(self, seq: int, batch: np.ndarray, codes: np.ndarray) -> None:
        if self.trove is not None:
            self.trove.append(batch, codes, seq)  # rows the trove already holds are skipped

    def note_journal_seq(self, seq: int) -> None:
        """The journal entry number of the next batch this hook observes (from the server)."""
        self._journal_seq = seq

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        self.batches_seen += 1
        self.rows_seen += len(batch)
        if self._ring is not None:
            self._ring.append(batch, codes)
            return
        assert self.trove is not None, "attach() opens the trove"
        seq = self._journal_seq or self._seq_base + self.batches_seen
        self._journal_seq = 0
        try:
            self.trove.append(batch, codes, seq)
        except TroveStopped:
            # Stopped (disk full, the trove process gone): not an observe error. The rows are
            # counted in rows_not_persisted and stats()["failure"] says why.
            return

    def background_ns(self) -> int:
        return self.trove.background_cpu_ns() if self.trove is not None else 0

    def drain_background(self) -> None:
        """Everything observed so far durable in the trove (a stopped trove has nothing queued)."""
        if self.trove is not None:
            with contextlib.suppress(TroveStopped):
                self.trove.flush()

    def query(self, account: int) -> np.ndarray:
        """Every kept row in which ``account`` paid or was paid, in the order observed, as LOG_DTYPE."""
        if self._ring is not None:
            return self._ring.query(account)
        assert self.trove is not None, "attach() opens the trove"
        from engine.trove.query import TroveReader

        self.trove.flush()
        reader = TroveReader(trove=self.trove)
        try:
            table = reader.payments(account).sort_by([("batch_seq", "ascending"), ("batch_index", "ascending")])
        finally:
            reader.close()
        out = np.empty(table.num_rows, dtype=LOG_DTYPE)
        for name in LOG_DTYPE.names or ():
            out[name] = table.column(name).to_numpy()
        return out

    def stats(self) -> dict[str, Any]:
        base: dict[str, Any] = {"mode": self.config.mode, "rows_seen": self.rows_seen}
        if self._ring is not None:
            return base | self._ring.stats()
        assert self.trove is not None, "attach() opens the trove"
        return base | self.trove.stats()

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
        if self.trove is not None:
            self.trove.close()  # stats() still reports the closed trove's final figures


class RingBuffer:
    """The buffer mode: the newest ``capacity`` rows in memory (and optionally a packed file)."""

    def __init__(self, config: SurveillanceLogConfig) -> None:
        self.config = config
        cap = config.capacity
        self.columns = {name: np.zeros(cap, dtype=LOG_DTYPE[name]) for name in LOG_DTYPE.names or ()}
        self.rows_seen = 0
        self.file_bytes = 0
        self._file: IO[bytes] | None = None

    def open(self) -> None:
        if self.config.path:
            self._file = Path(self.config.path).open("ab")  # noqa: SIM115 - held open for the run, closed by close()

    def append(self, batch: np.ndarray, codes: np.ndarray) -> None:
        n = len(batch)
        cap = self.config.capacity
        start = self.rows_seen % cap
        first = min(n, cap - start)
        for name, col in self.columns.items():
            src = codes if name == "code" else batch[name]
            col[start : start + first] = src[:first]
            col[: n - first] = src[first:]
        self.rows_seen += n
        if self._file is not None:
            rows = np.empty(n, dtype=LOG_DTYPE)
            for name in TRANSFER_DTYPE.names or ():
                rows[name] = batch[name]
            rows["code"] = codes
            self._file.write(rows.tobytes())
            self.file_bytes += rows.nbytes

    @property
    def rows_kept(self) -> int:
        return min(self.rows_seen, self.config.capacity)

    @property
    def rows_dropped(self) -> int:
        return self.rows_seen - self.rows_kept

    def query(self, account: int) -> np.ndarray:
        kept = self.rows_kept
        # Oldest first: the ring's physical order, rotated to start at the oldest row.
        oldest = self.rows_seen % self.config.capacity if self.rows_dropped else 0
        payer, payee = self.columns["payer"][:kept], self.columns["payee"][:kept]
        hits = np.flatnonzero((payer == account) | (payee == account))
        hits = np.concatenate([hits[hits >= oldest], hits[hits < oldest]])
        out = np.empty(len(hits), dtype=LOG_DTYPE)
        for name, col in self.columns.items():
            out[name] = col[hits]
        return out

    def stats(self) -> dict[str, int]:
        return {
            "rows_kept": self.rows_kept,
            "rows_dropped": self.rows_dropped,
            "store_bytes": sum(c.nbytes for c in self.columns.values()),
            "file_bytes": self.file_bytes,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_log(path: str | Path) -> np.ndarray:
    """The rows of a buffer-mode log file, as LOG_DTYPE."""
    return np.fromfile(path, dtype=LOG_DTYPE)
