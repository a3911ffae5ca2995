"""Durability: an append-only journal written before results are acknowledged.

Each engine batch is one entry holding its transfer records *and* the result codes the ledger
gave them (group commit: one write, and one fsync under ``fsync="batch"``, per engine batch).
Admin operations that change state (freeze, blacklist, issue...) are entries too. Recovery
rebuilds the ledger by re-applying every entry, in order, to a ledger built from the same seeded
initial state and profile: the engine is deterministic, so balances, idempotency windows and
hook state come back exactly. The journalled codes are compared with the replayed ones, so a
replay that diverges stops with an error instead of serving a ledger that differs from what
was acknowledged.

Format (little-endian): an 8-byte file magic, then entries of
``[length u32][kind u8][seq u64][crc32 u32][payload]``; the CRC covers kind, seq and payload.
A server's journal starts with a header entry (``JournalHeader``: accounts, seed, operators,
profile, scenario digest, ownership) so that recovery can refuse to replay into a ledger built
differently, before touching anything, instead of failing halfway with a code mismatch.
A torn or corrupt entry ends the journal: recovery truncates the file there and reports how many
bytes it dropped; nothing after it is applied.

Fsync policies: ``batch`` (fsync before every acknowledgement), ``interval:MS`` (fsync when the
last one is older than MS; an acknowledged batch can be lost on power failure, never on a
process crash, since each entry reaches the kernel with ``os.write`` before the ack), ``off``.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.codes import CODE_DTYPE
from engine.records import TRANSFER_DTYPE

MAGIC = b"CBDCJNL1"
_ENTRY = struct.Struct("<IBQI")
KIND_BATCH = 1
KIND_ADMIN = 2
KIND_HEADER = 3
_RECORD = TRANSFER_DTYPE.itemsize + CODE_DTYPE.itemsize


class AdminEntry(msgspec.Struct, array_like=True, frozen=True):
    """A state-changing admin operation, e.g. ("freeze", [12, 13])."""

    op: str
    accounts: list[int]
    amount_fen: int = 0


class JournalHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a ledger must be built from for a journal to replay into it (the first entry)."""

    accounts: int
    seed: int
    operators: int
    profile: str
    scenario_sha256: str = ""  # digest of the scenario file's bytes; "" = built-in scenario
    ownership: bool = False  # operators may debit only their own account range

    def differences(self, other: JournalHeader) -> list[str]:
        """``field: journal X, server Y`` for every field that differs."""
        return [
            f"{name}: journal {getattr(self, name)!r}, this server {getattr(other, name)!r}"
            for name in self.__struct_fields__
            if getattr(self, name) != getattr(other, name)
        ]


class JournalMismatch(RuntimeError):
    """Replay gave different result codes than the journal recorded."""


@dataclass(frozen=True, slots=True)
class FsyncPolicy:
    mode: str  # "batch", "interval" or "off"
    interval_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        if text in ("batch", "off"):
            return cls(text)
        if text.startswith("interval:"):
            try:
                ms = float(text.removeprefix("interval:"))
            except ValueError:
                ms = -1
            if ms > 0:
                return cls("interval", ms / 1000)
        raise ValueError(f"fsync policy must be 'batch', 'off' or 'interval:MS' (MS > 0), got {text!r}")

    def __str__(self) -> str:
        return f"interval:{self.interval_s * 1000:g}" if self.mode == "interval" else self.mode


@dataclass(frozen=True, slots=True)
class Recovery:
    entries: int
    batches: int
    transfers: int
    admin_ops: int
    truncated_bytes: int
    message: str


class Journal:
    """An open journal file for appending. Use ``recover`` first when the file exists."""

    def __init__(self, path: str | os.PathLike[str], fsync: FsyncPolicy | str = "batch", *, entries: int = 0) -> None:
        """Open ``path`` for appending after ``entries`` existing entries (``Recovery.entries``)."""
        self.path = Path(path)
        self.policy = FsyncPolicy.parse(fsync) if isinstance(fsync, str) else fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(self._fd).st_size == 0:
            os.write(self._fd, MAGIC)
            os.fsync(self._fd)
        self.seq = entries
        self.bytes_written = 0
        self.fsyncs = 0
        self.fsync_ns = 0
        self._last_sync = time.monotonic()
        self._encoder = msgspec.msgpack.Encoder()

    def append_batch(self, batch: np.ndarray, codes: np.ndarray) -> None:
        """Record an applied engine batch; returns once it is as durable as the policy says."""
        self._append(KIND_BATCH, batch.tobytes() + codes.astype(CODE_DTYPE, copy=False).tobytes())

    def append_admin(self, entry: AdminEntry) -> None:
        self._append(KIND_ADMIN, self._encoder.encode(entry))

    def append_header(self, header: JournalHeader) -> None:
        """Write the header; only as the first entry of a new journal."""
        if self.seq:
            raise ValueError(f"{self.path}: the header must be the first entry; the journal has {self.seq}")
        self._append(KIND_HEADER, self._encoder.encode(header))

    def _append(self, kind: int, payload: bytes) -> None:
        self.seq += 1
        head = struct.pack("<BQ", kind, self.seq)
        crc = zlib.crc32(payload, zlib.crc32(head))
        data = _ENTRY.pack(len(payload), kind, self.seq, crc) + payload
        written = os.write(self._fd, data)
        while written < len(data):  # os.write may write less than asked on some filesystems
            written += os.write(self._fd, data[written:])
        self.bytes_written += len(data)
        now = time.monotonic()
        if self.policy.mode == "batch" or (
            self.policy.mode == "interval" and now - self._last_sync >= self.policy.interval_s
        ):
            self.sync()

    def sync(self) -> None:
        t0 = time.perf_counter_ns()
        os.fsync(self._fd)
        self.fsync_ns += time.perf_counter_ns() - t0
        self.fsyncs += 1
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            if self.policy.mode != "off":
                self.sync()
            os.close(self._fd)
            self._fd = -1

    def stats(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "fsync": str(self.policy),
            "entries": self.seq,
            "bytes_written": self.bytes_written,
            "fsyncs": self.fsyncs,
            "fsync_ms_total": self.fsync_ns / 1e6,
        }


def recover(
    path: str | os.PathLike[str],
    apply_batch: Callable[[np.ndarray], np.ndarray],
    apply_admin: Callable[[AdminEntry], None],
    check_header: Callable[[JournalHeader], None] | None = None,
) -> Recovery:
    """Replay the journal at ``path`` through the callbacks; truncate a torn or corrupt tail.

    ``apply_batch`` must apply a batch to the ledger being rebuilt and return its codes.
    ``check_header``, if given, is called with the header entry before anything is replayed and
    should raise to refuse the journal; a journal with entries but no header is then refused too.
    Raises JournalMismatch if replayed codes differ from the recorded ones, and ValueError if
    the file is not a journal.
    """
    p = Path(path)
    data = p.read_bytes()
    if not data:
        return Recovery(0, 0, 0, 0, 0, f"{p}: empty journal")
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{p} is not a cbdc-bench journal (bad magic {data[:8]!r}); refusing to touch it")
    decoder = msgspec.msgpack.Decoder(AdminEntry)
    header_decoder = msgspec.msgpack.Decoder(JournalHeader)
    pos = len(MAGIC)
    batches = transfers = admin_ops = 0
    expected_seq = 1
    problem = ""
    while pos < len(data):
        if len(data) - pos < _ENTRY.size:
            problem = f"torn entry header at byte {pos}"
            break
        length, kind, seq, crc = _ENTRY.unpack_from(data, pos)
        start = pos + _ENTRY.size
        if len(data) - start < length:
            problem = f"torn entry {seq} at byte {pos}: {len(data) - start} of {length} payload bytes"
            break
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(struct.pack("<BQ", kind, seq))) != crc:
            problem = f"corrupt entry at byte {pos} (checksum mismatch)"
            break
        if seq != expected_seq or kind not in (KIND_BATCH, KIND_ADMIN, KIND_HEADER):
            problem = f"entry at byte {pos} has sequence {seq} (expected {expected_seq}) or unknown kind {kind}"
            break
        if (kind == KIND_HEADER) != (seq == 1) and (kind == KIND_HEADER or check_header is not None):
            # A good checksum on a misplaced header, or entries without a header, is not a torn
            # write: this file was not written by a server that checks headers. Refuse, untouched.
            raise ValueError(
                f"{p}: entry {seq} is {'a header' if kind == KIND_HEADER else 'not a header'}; a server journal "
                "starts with exactly one header entry. Refusing to replay it; use a new journal path."
            )
        if kind == KIND_HEADER:
            if check_header is not None:
                check_header(header_decoder.decode(payload))
        elif kind == KIND_BATCH:
            if length % _RECORD:
                problem = f"batch entry {seq} at byte {pos} has a payload of {length} bytes, not whole records"
                break
            n = length // _RECORD
            batch = np.frombuffer(payload, dtype=TRANSFER_DTYPE, count=n).copy()
            recorded = np.frombuffer(payload, dtype=CODE_DTYPE, offset=n * TRANSFER_DTYPE.itemsize)
            replayed = apply_batch(batch)
            if not np.array_equal(replayed, recorded):
                where = int(np.flatnonzero(replayed != recorded)[0])
                raise JournalMismatch(
                    f"{p}: replaying batch entry {seq} gave code {int(replayed[where])} for transfer {where}, "
                    f"the journal recorded {int(recorded[where])}; the server's profile, scenario, accounts or "
                    "seed differ from the run that wrote this journal"
                )
            batches += 1
            transfers += n
        else:
            apply_admin(decoder.decode(payload))
            admin_ops += 1
        pos = start + length
        expected_seq += 1
    truncated = len(data) - pos
    if truncated:
        with p.open("r+b") as f:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())
        message = f"{p}: {problem}; truncated {truncated} bytes after {expected_seq - 1} good entries"
    else:
        message = f"{p}: {expected_seq - 1} entries replayed cleanly"
    return Recovery(expected_seq - 1, batches, transfers, admin_ops, truncated, message)
