"""surveillance_log: every payment, with its location and device metadata, into a data trove.

"Every payment, with device and location metadata, lands in a central data trove" (docs/design.md).
Every transfer of every applied batch, accepted or rejected, is kept with its result code in a
bounded in-memory columnar ring (one numpy array per field, so a query by account scans only the
payer and payee columns); when the ring is full the oldest rows are overwritten and counted as
dropped. Optionally every row is also appended to a file of packed LOG_DTYPE records (49 bytes
each: the transfer record, then the code), which ``read_log`` reads back.

Batches refused whole with HOOK_ERROR are not observed by any hook, so they are not logged.
Observe is deferred by default: logging is off the latency path.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import msgspec
import numpy as np

from engine.hooks.base import Hook, LedgerView
from engine.records import MAX_BATCH, TRANSFER_DTYPE

#: One logged row: the transfer record followed by its result code, packed (49 bytes).
LOG_DTYPE = np.dtype([*((n, TRANSFER_DTYPE[n]) for n in TRANSFER_DTYPE.names or ()), ("code", "u1")])


class SurveillanceLogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Rows kept in memory (oldest overwritten first). 2**21 rows is about 100 MB.
    capacity: int = 1 << 21
    #: Append-only file of LOG_DTYPE rows; "" keeps the log in memory only.
    path: str = ""
    deferred: bool = True

    def __post_init__(self) -> None:
        if not MAX_BATCH <= self.capacity <= 1 << 32:
            raise ValueError(f"capacity must be in {MAX_BATCH}..{1 << 32} rows, got {self.capacity}")


class SurveillanceLog(Hook):
    name = "surveillance_log"

    def __init__(self, config: SurveillanceLogConfig | None = None) -> None:
        self.config = config or SurveillanceLogConfig()
        self.deferred = self.config.deferred
        cap = self.config.capacity
        self.columns = {name: np.zeros(cap, dtype=LOG_DTYPE[name]) for name in LOG_DTYPE.names or ()}
        self.rows_seen = 0
        self.file_bytes = 0
        self._file: IO[bytes] | None = None

    def output_files(self) -> list[Path]:
        return [Path(self.config.path)] if self.config.path else []

    def attach(self, ledger: LedgerView) -> None:
        if self.config.path:
            self._file = Path(self.config.path).open("ab")  # noqa: SIM115 - held open for the run, closed by close()

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
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
        """Every kept row in which ``account`` paid or was paid, oldest first, as LOG_DTYPE."""
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

    def store_bytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values())

    def stats(self) -> dict[str, int]:
        return {
            "rows_seen": self.rows_seen,
            "rows_kept": self.rows_kept,
            "rows_dropped": self.rows_dropped,
            "store_bytes": self.store_bytes(),
            "file_bytes": self.file_bytes,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_log(path: str | Path) -> np.ndarray:
    """The rows of a surveillance log file, as LOG_DTYPE."""
    return np.fromfile(path, dtype=LOG_DTYPE)
