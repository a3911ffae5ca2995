"""Durability: an append-only journal written before results are acknowledged.

Each engine batch is one entry holding its transfer records *and* the result codes the ledger
gave them (group commit: one write, and one fsync under ``fsync="batch"``, per engine batch).
Admin operations that change state (freeze, blacklist, issue...) are entries too. Recovery
rebuilds the ledger by re-applying every entry, in order, to a ledger built from the same seeded
initial state and profile: the engine is deterministic, so balances, idempotency windows and
hook state come back exactly. The journalled codes are compared with the replayed ones, so a
replay that diverges stops with an error instead of serving a ledger that differs from what
was acknowledged.

Format v2 (little-endian; ``FORMAT_VERSION``): the 8-byte file magic ``CBDCJNL2``, then entries,
each framed so that a reader can resynchronise past a damaged one::

    marker 4s  b"\\xabJE2" (resync marker: a reader scans for it after damage)
    length u32 payload bytes
    kind   u8  KIND_*
    flags  u8  0 (reserved)
    spare  u16 0 (reserved)
    seq    u64 1, 2, 3... (every entry, sync entries included)
    payload_crc u32  CRC-32 of the payload
    header_crc  u32  CRC-32 of the 24 bytes above (so a good header's length can be trusted
                     even when its payload is damaged)
    payload

Segments (issue 15): with ``segment_bytes`` the journal rolls on into ``J.seg-<first seq>`` files
(each starts with the magic; entries and sequence numbers continue). A roll fsyncs the segment
it closes, so only the newest segment has a tail. Segments behind the watermark (every durable
consumer past them: the oldest kept snapshot, the trove) are deleted by ``retire_through``; the
first file keeps only its header. ``recover(after_seq=S)`` reads only the segments from entry
S + 1 on, one at a time.

Kinds: ``HEADER`` (seq 1, a msgpack ``JournalHeader``), ``BATCH`` (``[clock u64][records][codes]``:
the sequencer clock at the batch's start, see ``engine.clock``, then the transfers and their
codes), ``ADMIN`` (a msgpack ``AdminEntry``), ``SYNC`` (``u64``: every entry up to this sequence
number had been fsynced when this entry was written). ``SNAPSHOT`` and ``WATERMARK`` are reserved
(snapshots are found by listing their directory, ``engine.snapshot``; the trove's progress is in
its manifest): this reader checks their framing and skips them, so writing them needs no format
change. A kind outside these is damage.

Durable points and the tail. ``SYNC`` entries are written right after each fsync returns, before
anything it covers is acknowledged. The header is fsynced when the file is created (in a temporary
file renamed into place, with the directory fsynced), so it is always durable. Everything after
the last recorded sync is the *tail*: what a power cut may have torn. On start:

* damage inside the tail (a torn or garbled last write) is cut automatically, and reported;
* damage at or before a recorded durable point (a bad CRC, a bad header, garbage, a missing
  entry) is not a torn write: recovery refuses with ``JournalDamaged``, naming the file, the byte
  offset, the last good entry and its sequence number, and how many intact entries follow the
  damage. Nothing is replayed or changed. Dropping that data is the operator's explicit decision:
  ``serve --journal J --repair truncate`` cuts at the damage and logs exactly what it dropped.

The CRCs are checksums against accidents (torn writes, bit rot), not a MAC: anyone who can write
the file can forge entries with valid CRCs. Tamper evidence for the payments is the audit chain
hook's job (``engine.hooks.audit_chain``), not the journal's.

Fsync policies: ``batch`` (fsync, then the SYNC entry, before every acknowledgement),
``interval:MS`` (fsync at most MS after a write, by a timer when the server is quiet; an
acknowledged batch can be lost on a power cut, never on a process crash, since each entry reaches
the kernel with ``os.write`` before the ack), ``off`` (never fsync while running: *nothing is
promised after a power cut*; the tail is everything after the header, or after the fsync of the
last clean shutdown). Under ``interval:MS`` in a running server (``start_timer`` given the loop),
the fsync runs on the journal's own thread (``_sync_in_background``): the event loop goes on
taking and applying frames (os.write to the same file) while the disk works, and the SYNC entry
for what the fsync covered (the entries written before it started) is written on the loop when it
returns. Acknowledgements never waited for it under this policy (they follow the ``os.write``),
so durability is unchanged; what changes is that an fsync that takes 1-70 ms beside other writes
on the disk (the trove's files: ``engine.trove.files``) no longer stalls every connection for
that long. Under ``batch`` in a running server the same thread gives a pipelined group commit
(``append_batch(wait=False)``): the batcher holds a batch's Results until an fsync that covers it
has returned (``on_durable``), and meanwhile applies and writes the next batches, which the next
fsync covers together; an acknowledgement still follows the fsync of its batch, as before, but the
loop no longer stops for it. Admin entries still wait on the loop (``append_admin``). A failed
write or fsync is never retried: after a failed fsync the kernel
may have dropped the unwritten pages (PostgreSQL's 2018 lesson), so the journal refuses every
later call and the server stops; a restart replays what the file really holds.

Exclusive use: ``JournalLock`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``J.lock`` (holding the
holder's pid) before anything reads or writes J: two servers on one journal would double-spend.

Version history (``FORMAT_VERSION``):

1. ``CBDCJNL1``: ``[length u32][kind u8][seq u64][crc32 u32][payload]``; a damaged entry anywhere
   ended the journal and everything after it was cut; days came from client timestamps.
   Still replayed (``_scan_v1``), with timestamp days, then rewritten as format 2 by
   ``upgrade_v1`` (the original kept as ``J.v1``); it keeps timestamp days (header clock 0).
2. ``CBDCJNL2`` (issue 13): resync markers, header CRC, SYNC entries (durable points), damage
   before the tail refuses, the sequencer clock in every batch entry, header fields for the
   clock, the result-code precedence id and reserved watermarks. Header fields added since, with
   defaults (so older headers still decode; no format change): ``population_version`` and
   ``population_sha256`` (issue 16), what the seeded starting state was built by; a journal whose
   population differs, or that records none, is refused by ``population_refusal``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import itertools
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import msgspec
import numpy as np

from engine.codes import CODE_DTYPE, LEDGER_CHECKS, PRECEDENCE_ID, ResultCode
from engine.records import MAX_BATCH, TRANSFER_DTYPE

#: Journal format version; history in the module docstring.
FORMAT_VERSION = 2
MAGIC_V1 = b"CBDCJNL1"
MAGIC = b"CBDCJNL2"
ENTRY_MARKER = b"\xabJE2"
_ENTRY = struct.Struct("<4sIBBHQII")  # marker, length, kind, flags, spare, seq, payload crc, header crc
_ENTRY_V1 = struct.Struct("<IBQI")
_CLOCK = struct.Struct("<Q")
KIND_BATCH = 1
KIND_ADMIN = 2
KIND_HEADER = 3
KIND_SYNC = 4
KIND_SNAPSHOT = 5  # reserved: a ledger snapshot's location and watermark (not written yet)
KIND_WATERMARK = 6  # reserved: an observer's (the trove's) durable progress (not written yet)
_KNOWN_KINDS = (KIND_BATCH, KIND_ADMIN, KIND_HEADER, KIND_SYNC, KIND_SNAPSHOT, KIND_WATERMARK)
_RECORD = TRANSFER_DTYPE.itemsize + CODE_DTYPE.itemsize
#: Larger payloads are not entries this code writes: a length above it marks a garbled header.
MAX_PAYLOAD = _CLOCK.size + MAX_BATCH * _RECORD + (1 << 20)
REPAIR_MODES = ("", "truncate")


class AdminEntry(msgspec.Struct, array_like=True, frozen=True):
    """A state-changing admin operation, e.g. ("freeze", [12, 13])."""

    op: str
    accounts: list[int]
    amount_fen: int = 0


class JournalHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a ledger must be built from for a journal to replay into it (the first entry).

    New fields get defaults (msgspec schema evolution), so older headers still decode.
    """

    accounts: int
    seed: int
    operators: int
    profile: str
    scenario_sha256: str = ""  # digest of the scenario file's bytes; "" = built-in scenario
    ownership: bool = False  # operators may debit only their own account range
    # Format 2: the sequencer's clock (engine.clock) and the result codes' precedence.
    clock_payments_per_day: int = 0  # 0 = days from client timestamps (format 1 journals)
    clock_start_ns: int = 0
    precedence: str = ""  # engine.codes.PRECEDENCE_ID; "" = before format 2
    # Reserved for later issues, so that they need no format change. Recorded, not compared.
    snapshot_seq: int = 0  # journal seq a ledger snapshot covers (replay starts after it)
    trove_seq: int = 0  # journal seq the trove has durably written
    risk_model_sha256: str = ""
    signed: bool = False  # transfers carry Ed25519 signatures checked before the sequencer
    # Issue 16: the seeded starting state (engine.population): the rule's version and a digest of
    # sampled starting state. 0 / "" = not recorded (written before they were: population 1 or 2).
    # Both are checked by ``population_refusal``; the digest is not a build field (it follows
    # accounts and seed, which ``differences`` names more clearly).
    population_version: int = 0
    population_sha256: str = ""

    #: Fields that describe how the ledger is built: they must match to replay.
    BUILD_FIELDS: ClassVar[tuple[str, ...]] = (
        "accounts",
        "seed",
        "operators",
        "profile",
        "scenario_sha256",
        "ownership",
        "clock_payments_per_day",
        "clock_start_ns",
        "precedence",
        "risk_model_sha256",
        "signed",
        "population_version",
    )

    def differences(self, other: JournalHeader) -> list[str]:
        """``field: journal X, server Y`` for every build field that differs.

        A format 1 journal (clock 0: timestamp days; no precedence id) is not compared on those:
        it replays with the rules it was written under.
        """
        skip = set()
        if self.clock_payments_per_day == 0:
            skip |= {"clock_payments_per_day", "clock_start_ns"}
        if not self.precedence:
            skip.add("precedence")
        return [
            f"{name}: journal {getattr(self, name)!r}, this server {getattr(other, name)!r}"
            for name in self.BUILD_FIELDS
            if name not in skip and getattr(self, name) != getattr(other, name)
        ]

    def population_refusal(self, server: JournalHeader, path: str | os.PathLike[str]) -> str | None:
        """Why the journal at ``path`` (this header) cannot replay into ``server``'s seeded state; None if it can.

        Replay re-applies payments to a ledger built from the seed: built by another population
        rule, the same payments give other balances (often without a different result code to
        notice), so the journal is refused before anything is replayed.
        """
        fresh = (
            f"To keep that ledger, serve this journal with the cbdc-bench that wrote it; to start a new "
            f"ledger with this one, give --journal a new path (and move {path} and its snapshots away). "
            "Nothing was replayed."
        )
        if self.population_version == 0:
            return (
                f"journal {path} records no population version (it was written before journals recorded one, "
                f"by population version 1, or 2 if written after 2026-12-03 07:27 UTC, commit ba318af); this server "
                f"builds population version {server.population_version}, and replaying into a differently seeded "
                f"ledger would not give back the state it acknowledged. {fresh}"
            )
        if self.population_version != server.population_version:
            return (
                f"journal {path} was written on population version {self.population_version}; this server builds "
                f"population version {server.population_version} (engine.population: another rule for the starting "
                f"balances and wallet classes), so replaying it would not give back the state it acknowledged. {fresh}"
            )
        same_config = (self.accounts, self.seed) == (server.accounts, server.seed)  # else ``differences`` says so
        recorded = self.population_sha256 and server.population_sha256
        if same_config and recorded and self.population_sha256 != server.population_sha256:
            return (
                f"journal {path} was written on population version {self.population_version}, as this server builds, "
                f"but its sampled starting state differs (digest {self.population_sha256[:12]}, this server "
                f"{server.population_sha256[:12]}): the population rule or its constants changed without a new "
                f"version (a bug: please report it). {fresh}"
            )
        return None


class JournalMismatch(RuntimeError):
    """Replay gave different result codes (or clock) than the journal recorded."""


class JournalDamaged(RuntimeError):
    """The journal is damaged before its tail: refusing to start (``--repair truncate`` drops it)."""


class JournalLocked(RuntimeError):
    """Another process holds the journal's lock."""


class JournalFailed(OSError):
    """An earlier write or fsync failed: the journal takes nothing more (never retried)."""


class FileIO(Protocol):
    """The file operations the journal writes through (tests inject faults and record them here)."""

    def write(self, fd: int, data: bytes | memoryview) -> int: ...

    def fsync(self, fd: int) -> None: ...


class OsIO:
    """The real thing: ``os.write`` and ``os.fsync``."""

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)


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

    def promise(self) -> str:
        """What survives what, in one line, for the startup note and the docs."""
        if self.mode == "batch":
            return "every acknowledged transfer is fsynced: survives a process crash and a power cut"
        if self.mode == "interval":
            return (
                f"acknowledged transfers survive a process crash; a power cut may lose the last "
                f"{self.interval_s * 1000:g} ms of them"
            )
        return (
            "fsync off: acknowledged transfers survive a process crash, but NOTHING is promised after a "
            "power cut (everything after the last clean shutdown may be lost)"
        )


@dataclass(frozen=True, slots=True)
class Recovery:
    entries: int  # the last sequence number replayed (the next entry is entries + 1)
    batches: int
    transfers: int
    admin_ops: int
    truncated_bytes: int
    message: str
    version: int = FORMAT_VERSION
    durable_seq: int = 0
    dropped_seqs: tuple[int, ...] = ()  # intact entries that a cut dropped (tail or repair)
    header: JournalHeader | None = None


class JournalLock:
    """``flock(LOCK_EX | LOCK_NB)`` on ``<journal>.lock``, which holds the holder's pid.

    A second server on the same journal would apply payments that the first never sees (a double
    spend) and interleave entries: it must not start. The lock goes with the process (a killed
    server's lock is released by the kernel), so a stale lock file never blocks a restart.
    """

    def __init__(self, journal: str | os.PathLike[str]) -> None:
        self.path = Path(str(journal) + ".lock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise JournalLocked(
                f"journal {journal} is in use by another server (pid {holder}, lock {self.path}); "
                "two servers on one journal would double-spend. Stop that server or use another journal path."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = -1


def _frame(kind: int, seq: int, payload: bytes) -> bytes:
    head = _ENTRY.pack(ENTRY_MARKER, len(payload), kind, 0, 0, seq, zlib.crc32(payload), 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def _timed_fsync(io: FileIO, fd: int) -> int:
    """``io.fsync(fd)``, on whichever thread syncs; returns the ns it took."""
    t0 = time.perf_counter_ns()
    io.fsync(fd)
    return time.perf_counter_ns() - t0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path.parent or Path("."), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(path: str | os.PathLike[str], header: JournalHeader) -> None:
    """A new journal holding only ``header``, durably: temporary file, fsync, rename, dir fsync.

    So a journal either does not exist or starts with a durable header: a crash while creating it
    never leaves a header-less file that the next start would have to guess about.
    """
    _create_file(Path(path), MAGIC + _frame(KIND_HEADER, 1, msgspec.msgpack.encode(header)))


def _create_file(p: Path, data: bytes) -> None:
    """``p`` holding ``data``, durably: temporary file, fsync, rename, directory fsync."""
    tmp = p.with_name(p.name + ".creating")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    _fsync_dir(p)


#: A later segment of journal J is ``J.seg-<its first entry's sequence number, 20 digits>``.
SEGMENT_INFIX = ".seg-"


def segment_path(journal: str | os.PathLike[str], first_seq: int) -> Path:
    p = Path(journal)
    return p.with_name(f"{p.name}{SEGMENT_INFIX}{first_seq:020d}")


def segment_files(journal: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(first sequence number, path) of every segment, oldest first; the journal's own path is the
    first (it holds the header, seq 1). Rolling is described in ``Journal._roll``."""
    p = Path(journal)
    prefix = p.name + SEGMENT_INFIX
    later = []
    if p.parent.is_dir():
        for child in p.parent.iterdir():
            rest = child.name.removeprefix(prefix)
            if child.name.startswith(prefix) and len(rest) == 20 and rest.isdigit():
                later.append((int(rest), child))
    return [(1, p), *sorted(later)]


def _read_prefix(p: Path) -> bytes:
    """The bytes of ``p`` that can hold its magic and its first entry."""
    with p.open("rb") as f:
        return f.read(len(MAGIC) + _ENTRY.size + MAX_PAYLOAD)


def _first_entry(data: bytes) -> bytes:
    """The framed first entry (the header) of journal bytes starting with the magic."""
    entry, problem = _entry_at(data, len(MAGIC))
    if entry is None:
        raise ValueError(f"journal header entry is damaged: {problem}")
    return data[entry.offset : entry.end]


def upgrade_v1(path: str | os.PathLike[str]) -> int:
    """Rewrite a replayed format 1 journal as format 2 in place; returns its last sequence number.

    The original is kept beside it as ``<path>.v1``. Entries keep their sequence numbers; each
    batch gets the clock value replay computes (payments sequenced before it: its predecessors'
    transfers whose codes are not ``LEDGER_CHECKS``, in batches not refused whole); the header
    keeps ``clock_payments_per_day = 0``, so this journal keeps format 1's timestamp days for its
    whole life (the server says so at start). Call only after ``recover`` replayed it cleanly
    (which also cut a torn end).
    """
    p = Path(path)
    data = p.read_bytes()
    scan = _scan_v1(data)
    if scan.damage_at >= 0 or not scan.entries or scan.entries[0].kind != KIND_HEADER:
        raise ValueError(f"{p}: only a clean format 1 server journal can be upgraded ({scan.problem or 'no header'})")
    old = msgspec.msgpack.decode(scan.entries[0].payload, type=JournalHeader)
    header = msgspec.structs.replace(old, clock_payments_per_day=0, precedence=PRECEDENCE_ID)
    parts = [MAGIC, _frame(KIND_HEADER, 1, msgspec.msgpack.encode(header))]
    payments = 0
    ledger_checks = np.array(sorted(LEDGER_CHECKS), dtype=CODE_DTYPE)
    for e in scan.entries[1:]:
        payload = e.payload
        if e.kind == KIND_BATCH:
            n = len(payload) // _RECORD
            codes = np.frombuffer(payload, dtype=CODE_DTYPE, offset=n * TRANSFER_DTYPE.itemsize)
            payload = _CLOCK.pack(payments) + payload
            if not (codes == ResultCode.HOOK_ERROR).all():  # a refused batch sequences nothing
                payments += int(np.count_nonzero(~np.isin(codes, ledger_checks)))
        parts.append(_frame(e.kind, e.seq, payload))
    last = scan.entries[-1].seq
    parts.append(_frame(KIND_SYNC, last + 1, _CLOCK.pack(last + 1)))
    tmp = p.with_name(p.name + ".upgrading")
    tmp.write_bytes(b"".join(parts))
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    backup = p.with_name(p.name + ".v1")
    n = 1
    while backup.exists():
        n += 1
        backup = p.with_name(f"{p.name}.v1.{n}")
    os.link(p, backup)
    os.replace(tmp, p)
    _fsync_dir(p)
    return last + 1


class Journal:
    """An open v2 journal for appending, after ``create`` or ``recover``.

    ``entries`` is the last sequence number in the file (``Recovery.entries``; 1 for a new file).
    ``io`` is what writes go through (``OsIO``; tests inject faults). ``durable_seq`` is the last
    entry covered by a completed fsync; the header, fsynced by ``create``, always is.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fsync: FsyncPolicy | str = "batch",
        *,
        entries: int = 1,
        io: FileIO | None = None,
        segment_bytes: int = 0,
    ) -> None:
        self.path = Path(path)
        self.policy = FsyncPolicy.parse(fsync) if isinstance(fsync, str) else fsync
        #: Roll into a new segment once the current one holds this many bytes (0: never).
        self.segment_bytes = segment_bytes
        #: The segment appended to: the newest one (``Recovery.entries`` is its last entry).
        self.segment = segment_files(self.path)[-1][1]
        for where in (self.path, self.segment):
            with where.open("rb") as f:
                magic = f.read(len(MAGIC))
            if magic != MAGIC:
                raise ValueError(
                    f"{where}: not a format {FORMAT_VERSION} journal (magic {magic!r}); open journals with "
                    "engine.server.recovery.open_journal, which upgrades a format 1 journal first"
                )
        self._fd = os.open(self.segment, os.O_WRONLY | os.O_APPEND)
        self._segment_size = os.fstat(self._fd).st_size
        self.rolls = 0
        self.retired_segments = 0
        self.retired_bytes = 0
        self.io: FileIO = io or OsIO()
        self.seq = entries
        self._entry_seq = entries  # the last entry ``_append`` wrote (a roll's SYNC entries follow it)
        # What recovery replayed may still be only in the page cache (a killed server under
        # interval or off): make it durable before anything is appended after it.
        os.fsync(self._fd)
        self.durable_seq = entries
        self._dirty = False  # an entry other than SYNC was written since the last fsync
        self.bytes_written = 0
        self.fsyncs = 0
        self.fsync_ns = 0
        self.failed: BaseException | None = None
        self._last_sync = time.monotonic()
        self._encoder = msgspec.msgpack.Encoder()
        self._timer: Any = None
        self._call_later: Callable[[float, Callable[[], None]], Any] | None = None
        self._on_failure: Callable[[OSError], None] | None = None
        #: interval and batch modes in a server: the fsync thread, the loop its results go back
        #: to, and the fsync running (its future, the last entry it covers) or None.
        self._fsync_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: Any = None
        self._inflight: tuple[concurrent.futures.Future[int], int] | None = None
        #: Told the new ``durable_seq`` each time an fsync has made more entries durable (the
        #: batcher releases the Results it held for them: ``defers_acks``).
        self.on_durable: Callable[[int], None] | None = None

    # ---- appending ---------------------------------------------------------------------------

    def append_batch(self, batch: np.ndarray, codes: np.ndarray, clock: int = 0, *, wait: bool = True) -> int:
        """Record an applied engine batch; returns its entry's sequence number once it is as
        durable as the policy says, or, with ``wait=False`` where ``defers_acks``, once it is
        written and an fsync that will cover it is under way (its Results wait for ``on_durable``).

        ``clock`` is the sequencer clock (payments sequenced) at the batch's start.
        """
        payload = _CLOCK.pack(clock) + batch.tobytes() + codes.astype(CODE_DTYPE, copy=False).tobytes()
        self._append(KIND_BATCH, payload, wait=wait)
        return self._entry_seq

    def append_admin(self, entry: AdminEntry) -> None:
        self._append(KIND_ADMIN, self._encoder.encode(entry))

    @property
    def defers_acks(self) -> bool:
        """Whether ``append_batch(wait=False)`` pipelines: ``batch`` with a loop and an fsync thread."""
        return self.policy.mode == "batch" and self._fsync_thread is not None and self.failed is None

    def _append(self, kind: int, payload: bytes, *, wait: bool = True) -> None:
        self._write(kind, payload)
        self._entry_seq = self.seq
        if self.policy.mode == "batch":
            if wait or self._fsync_thread is None:
                self.sync()
            else:
                self._sync_in_background()
        elif self.policy.mode == "interval":
            if time.monotonic() - self._last_sync >= self.policy.interval_s:
                self._sync_due()
            elif self._timer is None and self._call_later is not None:
                self._timer = self._call_later(self.policy.interval_s, self._timer_sync)
        if self.segment_bytes and self._segment_size >= self.segment_bytes:
            self._roll()

    def _roll(self) -> None:
        """Close the current segment durably (fsync, SYNC entry, fsync) and continue in a new one.

        So every segment but the newest ends at a durable point: damage in an older segment is
        never a torn write. The new segment (magic only) is created like the journal itself:
        temporary file, fsync, rename, directory fsync.
        """
        self.sync()  # waits for a background fsync of this segment first
        try:
            self.io.fsync(self._fd)  # the SYNC entry that closes the segment
        except OSError as exc:
            self.failed = exc
            raise
        nxt = segment_path(self.path, self.seq + 1)
        _create_file(nxt, MAGIC)
        os.close(self._fd)
        self._fd = os.open(nxt, os.O_WRONLY | os.O_APPEND)
        self.segment = nxt
        self._segment_size = len(MAGIC)
        self.rolls += 1

    def fileno(self) -> int:
        """The current segment's descriptor (the snapshot writer fsyncs it before a snapshot counts)."""
        return self._fd

    def disk_bytes(self) -> int:
        """Bytes of every segment on disk."""
        return sum(p.stat().st_size for _, p in segment_files(self.path) if p.exists())

    def retire_through(self, seq: int) -> int:
        """Delete the segments whose entries are all at or below ``seq``; returns the bytes freed.

        ``seq`` is the watermark: the lowest journal number every durable consumer (the oldest
        retained snapshot, the trove) has durably past. The current segment is never retired.
        The first file (the journal's own path) holds the header: it is cut back to the header
        (rewritten durably), not deleted, so the journal keeps its identity and build fields.
        """
        files = segment_files(self.path)
        freed = 0
        for (_, p), (next_first, _) in itertools.pairwise(files):
            if next_first - 1 > seq or p == self.segment:
                break
            before = p.stat().st_size
            if p == self.path:
                header = _first_entry(_read_prefix(p))
                if before <= len(MAGIC) + len(header):
                    continue
                _create_file(p, MAGIC + header)
                freed += before - len(MAGIC) - len(header)
            else:
                p.unlink()
                freed += before
            self.retired_segments += 1
        if freed:
            _fsync_dir(self.path)
            self.retired_bytes += freed
        return freed

    def _write(self, kind: int, payload: bytes) -> None:
        self._refuse_if_failed()
        self.seq += 1
        data = _frame(kind, self.seq, payload)
        try:
            written = self.io.write(self._fd, data)
            while written < len(data):  # os.write may write less than asked on some filesystems
                written += self.io.write(self._fd, data[written:])
        except OSError as exc:
            self.failed = exc
            raise
        self.bytes_written += len(data)
        self._segment_size += len(data)
        self._dirty = kind != KIND_SYNC or self._dirty

    def _refuse_if_failed(self) -> None:
        if self.failed is not None:
            raise JournalFailed(errno.EIO, f"{self.path}: an earlier write or fsync failed ({self.failed})")

    def sync(self) -> None:
        """fsync, then record the durable point (a SYNC entry, itself synced by the next fsync).

        On the caller's thread; a background fsync still running is waited for first."""
        self._settle()
        self._refuse_if_failed()
        if not self._dirty:
            return
        try:
            took = _timed_fsync(self.io, self._fd)
        except OSError as exc:
            self.failed = exc  # never retried: the kernel may have dropped the pages it could not write
            raise
        self._last_sync = time.monotonic()
        self._dirty = False
        self._synced(self.seq, took)

    # ---- interval timer and background fsync ---------------------------------------------------

    def start_timer(
        self,
        call_later: Callable[[float, Callable[[], None]], Any],
        on_failure: Callable[[OSError], None],
        *,
        loop: Any = None,
    ) -> None:
        """Under ``interval:MS``, sync MS after an unsynced write even if nothing else is written.

        ``call_later`` is the event loop's; ``on_failure`` is told if a timer's or a background
        fsync fails. Given the ``loop`` itself (an ``asyncio`` loop: its ``call_soon_threadsafe``),
        the fsyncs run on a thread of the journal's and their results come back to the loop
        (module docstring, "Fsync policies").
        """
        self._call_later = call_later
        self._on_failure = on_failure
        if loop is not None and self.policy.mode in ("interval", "batch") and self._fsync_thread is None:
            self._loop = loop
            self._fsync_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-fsync")

    def _timer_sync(self) -> None:
        self._timer = None
        if self._fd < 0 or self.failed is not None:
            return
        try:
            self._sync_due()
        except OSError as exc:
            if self._on_failure is not None:
                self._on_failure(exc)

    def _sync_due(self) -> None:
        """An interval's fsync is due: in the background when a loop was given, else now."""
        if self._fsync_thread is None:
            self.sync()
        else:
            self._sync_in_background()

    def _sync_in_background(self) -> None:
        """Start an fsync on the journal's thread covering every entry written so far.

        One at a time: while one runs, later writes wait for the next, which its completion
        starts (or the timer does) once the interval has passed. ``_last_sync`` counts from an
        fsync's start, so the interval is between starts, as on the loop.
        """
        self._refuse_if_failed()
        if self._inflight is not None or not self._dirty or self._fsync_thread is None:
            return
        target, fd, io, loop = self.seq, self._fd, self.io, self._loop
        self._dirty = False
        self._last_sync = time.monotonic()
        fut = self._fsync_thread.submit(_timed_fsync, io, fd)
        self._inflight = (fut, target)

        def back_to_the_loop(f: concurrent.futures.Future[int]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: ``close`` settled it
                loop.call_soon_threadsafe(self._fsync_done, f)

        fut.add_done_callback(back_to_the_loop)

    def _fsync_done(self, fut: concurrent.futures.Future[int]) -> None:
        """On the loop: a background fsync returned. Record it (``_settle``); tell the server if
        it failed; start the next if writes came meanwhile and the interval has passed (else
        the timer will)."""
        if self._inflight is None or self._inflight[0] is not fut:
            return  # ``_settle`` already took it (a roll, a close, a synchronous sync)
        try:
            self._settle()
            if self._dirty and self._fd >= 0:
                if self.policy.mode == "batch" or time.monotonic() - self._last_sync >= self.policy.interval_s:
                    self._sync_in_background()
                elif self._timer is None and self._call_later is not None:
                    self._timer = self._call_later(self.policy.interval_s, self._timer_sync)
        except OSError as exc:
            if self._on_failure is not None:
                self._on_failure(exc)

    def _settle(self) -> None:
        """Wait for the background fsync, if one runs, and record its outcome: the durable point
        and its SYNC entry, or the failure (raised: never retried, as on the loop)."""
        if self._inflight is None:
            return
        fut, target = self._inflight
        exc = fut.exception()  # waits
        self._inflight = None
        if exc is not None:
            if self.failed is None:
                self.failed = exc
            raise exc
        self._synced(target, fut.result())  # the fsync's own time, not the loop's wait to notice it

    def _synced(self, target: int, fsync_ns: int) -> None:
        """An fsync that took ``fsync_ns`` made every entry through ``target`` durable: count it,
        record the durable point (a SYNC entry, itself synced by the next fsync) and tell
        ``on_durable``."""
        self.fsync_ns += fsync_ns
        self.fsyncs += 1
        if target > self.durable_seq:
            self.durable_seq = target
            if self._fd >= 0:
                self._write(KIND_SYNC, _CLOCK.pack(target))
            if self.on_durable is not None:
                self.on_durable(target)

    def close(self) -> None:
        """Sync (a clean shutdown is a durable point under every policy) and close.

        After a failure the file is closed without an fsync: a retried fsync could report success
        for pages the kernel already dropped.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(OSError):
            self._settle()  # a background fsync still running finishes before its file closes
        if self._fsync_thread is not None:
            self._fsync_thread.shutdown(wait=True)
            self._fsync_thread = None
        if self._fd >= 0:
            if self.failed is None and self._dirty:
                with contextlib.suppress(OSError):
                    self.sync()
                    self.io.fsync(self._fd)  # the last SYNC entry too: a clean shutdown is fully durable
            os.close(self._fd)
            self._fd = -1

    def stats(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": FORMAT_VERSION,
            "fsync": str(self.policy),
            "entries": self.seq,
            "durable_seq": self.durable_seq,
            "bytes_written": self.bytes_written,
            "segments": len(segment_files(self.path)),
            "segment_bytes": self.segment_bytes,
            "disk_bytes": self.disk_bytes(),
            "rolls": self.rolls,
            "retired_segments": self.retired_segments,
            "retired_bytes": self.retired_bytes,
            "fsyncs": self.fsyncs,
            "fsync_ms_total": self.fsync_ns / 1e6,
        }


# ---- reading -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    offset: int
    end: int
    kind: int
    seq: int
    payload: bytes


@dataclass(slots=True)
class _Scan:
    """What a pass over the file found: the good prefix, and the first damage if any."""

    version: int
    entries: list[_Entry] = field(default_factory=list)
    damage_at: int = -1  # byte offset of the first damaged entry; -1 = none
    problem: str = ""
    after: list[_Entry] = field(default_factory=list)  # intact entries found past the damage
    durable_seq: int = 0
    torn_end: bool = False  # the damage is an incomplete last write (v1's only cuttable case)


def _entry_at(data: bytes, pos: int) -> tuple[_Entry | None, str]:
    """The v2 entry at ``pos`` if it is whole and intact, else (None, what is wrong)."""
    if len(data) - pos < _ENTRY.size:
        return None, f"torn entry header: {len(data) - pos} bytes at the end, less than an entry header"
    marker, length, kind, _, _, seq, payload_crc, header_crc = _ENTRY.unpack_from(data, pos)
    if marker != ENTRY_MARKER:
        return None, "no entry marker (garbage or a damaged header)"
    if zlib.crc32(data[pos : pos + _ENTRY.size - 4]) != header_crc:
        return None, "entry header checksum mismatch"
    if length > MAX_PAYLOAD or kind not in _KNOWN_KINDS:
        return None, f"entry {seq} has kind {kind} and length {length}, which format {FORMAT_VERSION} does not have"
    start = pos + _ENTRY.size
    if len(data) - start < length:
        return None, f"entry {seq} is torn: {len(data) - start} of {length} payload bytes"
    payload = data[start : start + length]
    if zlib.crc32(payload) != payload_crc:
        return None, f"entry {seq} payload checksum mismatch"
    return _Entry(pos, start + length, kind, seq, payload), ""


def _scan_v2(data: bytes, first_seq: int = 1) -> _Scan:
    scan = _Scan(2)
    pos = len(MAGIC)
    expected = first_seq
    while pos < len(data):
        entry, problem = _entry_at(data, pos)
        if entry is not None and entry.seq != expected:
            problem = f"entry has sequence {entry.seq}, expected {expected} (entries missing)"
            entry = None
        if entry is None:
            scan.damage_at, scan.problem = pos, problem
            scan.torn_end = "torn" in problem
            break
        scan.entries.append(entry)
        pos = entry.end
        expected += 1
    if scan.damage_at >= 0:  # resynchronise: every intact entry past the damage, by its marker
        pos = data.find(ENTRY_MARKER, scan.damage_at + 1)
        while pos >= 0:
            entry, _ = _entry_at(data, pos)
            if entry is not None:
                scan.after.append(entry)
                pos = data.find(ENTRY_MARKER, entry.end)
            else:
                pos = data.find(ENTRY_MARKER, pos + 1)
    syncs = [_CLOCK.unpack(e.payload)[0] for e in scan.entries + scan.after if e.kind == KIND_SYNC]
    # The header is fsynced by create() before anything else is written: always durable; so is
    # everything before a later segment (a roll fsyncs the segment it closes).
    scan.durable_seq = max([max(1, first_seq - 1), *syncs])
    return scan


def _scan_v1(data: bytes) -> _Scan:
    """Format 1: no markers, no durable points; only an incomplete last write may be cut."""
    scan = _Scan(1)
    pos = len(MAGIC_V1)
    expected = 1
    while pos < len(data):
        if len(data) - pos < _ENTRY_V1.size:
            scan.damage_at, scan.problem, scan.torn_end = pos, "torn entry header", True
            break
        length, kind, seq, crc = _ENTRY_V1.unpack_from(data, pos)
        start = pos + _ENTRY_V1.size
        if len(data) - start < length:
            scan.damage_at, scan.problem, scan.torn_end = pos, f"torn entry {seq}", True
            break
        payload = data[start : start + length]
        if (
            zlib.crc32(payload, zlib.crc32(struct.pack("<BQ", kind, seq))) != crc
            or seq != expected
            or kind not in (KIND_BATCH, KIND_ADMIN, KIND_HEADER)
        ):
            scan.damage_at, scan.problem = pos, f"entry at byte {pos}: checksum, sequence or kind is wrong"
            break
        scan.entries.append(_Entry(pos, start + length, kind, seq, payload))
        pos = start + length
        expected += 1
    scan.durable_seq = scan.entries[-1].seq if scan.entries else 0
    return scan


def _describe_damage(p: Path, scan: _Scan) -> tuple[str, tuple[int, ...]]:
    """The message naming the damage, and the sequence numbers of intact entries a cut drops."""
    last = scan.entries[-1] if scan.entries else None
    last_text = (
        f"the last good entry is seq {last.seq} (kind {last.kind}) at bytes {last.offset}..{last.end}"
        if last
        else "there is no good entry before it"
    )
    dropped = tuple(e.seq for e in scan.after)
    seqs = f" (seq {dropped[0]}..{dropped[-1]})" if dropped else ""
    follow = (
        f"{len(dropped)} intact entries follow the damage{seqs}; the last recorded durable point is seq "
        f"{scan.durable_seq}"
        if scan.version == 2
        else "format 1 has no resync markers, so the entries after it cannot be counted"
    )
    message = f"{p}: damage at byte {scan.damage_at}: {scan.problem}; {last_text}; {follow}"
    return message, dropped


def recover(
    path: str | os.PathLike[str],
    apply_batch: Callable[[np.ndarray, int], np.ndarray],
    apply_admin: Callable[[AdminEntry], None],
    check_header: Callable[[JournalHeader], None] | None = None,
    *,
    repair: str = "",
    log: Callable[[str], None] | None = None,
    note_seq: Callable[[int], None] | None = None,
    after_seq: int = 0,
    replay_output: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    output_from: int = 0,
) -> Recovery:
    """Replay the journal at ``path`` (all its segments) through the callbacks; cut a torn tail.

    ``apply_batch(batch, clock)`` must apply a batch to the ledger being rebuilt and return its
    codes; ``clock`` is the journalled sequencer clock at the batch's start (-1 for format 1), to
    be checked against the ledger's own. ``check_header``, if given, is called with the header
    before anything is replayed and should raise to refuse the journal; a journal with entries
    but no header is then refused too.

    ``after_seq``: a snapshot already holds the state through this entry, so replay starts after
    it and the segments wholly before it are not read at all: restart time and memory depend on
    what follows the snapshot, not on the journal's age. Segments are read one at a time (memory:
    about twice a segment). ``replay_output(seq, batch, codes)`` gets the batch entries from
    ``output_from`` through ``after_seq``: a durable consumer (the trove) behind the snapshot.

    Damage in the tail (after the last recorded durable point) is cut; damage before it raises
    ``JournalDamaged`` before anything is replayed or changed, unless ``repair="truncate"``, which
    cuts there and says (through ``log`` and ``Recovery.message``) exactly what it dropped.
    Every segment but the newest ends at a durable point (a roll fsyncs it), so damage in an
    older segment is never a tail; a repair there also sets the later segments aside.
    ``note_seq(seq)``, if given, is called with each batch entry's journal number before it is applied.
    Raises JournalMismatch if replayed codes or clock differ from the recorded ones, and ValueError
    if the file is not a journal.
    """
    if repair not in REPAIR_MODES:
        raise ValueError(f"repair must be one of {REPAIR_MODES}, got {repair!r}")
    p = Path(path)
    files = segment_files(p)
    first_needed = max(
        1, min(after_seq + 1, output_from) if replay_output is not None and output_from else after_seq + 1
    )
    start = max(i for i, (first, _) in enumerate(files) if first <= first_needed)
    state = _Replay(p, apply_batch, apply_admin, check_header, note_seq, after_seq, replay_output, first_needed)
    if start > 0:  # the header is all that is needed of the segments before
        prefix = _read_prefix(p)
        if prefix[: len(MAGIC)] != MAGIC:
            raise ValueError(
                f"{p} is not a cbdc-bench format 2 journal (bad magic {prefix[:8]!r}); refusing to touch it"
            )
        head, problem = _entry_at(prefix, len(MAGIC))
        if head is None:
            raise JournalDamaged(f"{p}: the header entry is damaged ({problem}); refusing to start, nothing replayed")
        state.entries([head], 2)
    version = 2
    truncated = 0
    note = ""
    dropped: tuple[int, ...] = ()
    expected = files[start][0]
    durable = 1
    for i in range(start, len(files)):
        first, sp = files[i]
        if i > 0 and first != expected:
            why = (
                "its snapshot is damaged or missing"
                if first_needed == after_seq + 1
                else f"a durable consumer such as the trove is behind the snapshot at entry {after_seq}: it lost "
                "output the journal no longer holds (segments go once every consumer had them durably)"
            )
            raise JournalDamaged(
                f"{sp}: segment starts at entry {first}, the previous segment ends at entry {expected - 1}: entries "
                f"are missing. Segments are deleted only once the oldest retained snapshot covers them; "
                f"recovery needs entries from {first_needed} ({why}). Nothing was replayed."
            )
        data = sp.read_bytes()
        if not data:
            raise ValueError(f"{sp} is empty, not a journal (a journal is created with its header); remove it")
        if data[: len(MAGIC)] == MAGIC:
            scan = _scan_v2(data, first)
        elif data[: len(MAGIC_V1)] == MAGIC_V1 and i == 0 and len(files) == 1:
            scan = _scan_v1(data)
            version = 1
        else:
            raise ValueError(f"{sp} is not a cbdc-bench journal (bad magic {data[:8]!r}); refusing to touch it")
        durable = max(durable, scan.durable_seq)
        last_file = i == len(files) - 1
        cut_at = -1
        if scan.damage_at >= 0:
            message, dropped = _describe_damage(sp, scan)
            damaged_seq = scan.entries[-1].seq + 1 if scan.entries else first
            in_tail = last_file and (scan.torn_end if scan.version == 1 else damaged_seq > scan.durable_seq)
            later = [f for _, f in files[i + 1 :]]
            if not in_tail and repair != "truncate":
                also = f" and the {len(later)} later segments" if later else ""
                raise JournalDamaged(
                    f"{message}. The damage is before the tail, so it is not a torn write: refusing to start, "
                    f"nothing was replayed or changed. To drop everything from byte {scan.damage_at} "
                    f"({len(data) - scan.damage_at} bytes, {len(dropped)} intact entries){also}, keep a copy of the "
                    f"journal and start with --repair truncate."
                )
            cut_at = scan.damage_at
            why = "in the tail (after the last recorded fsync): a torn write" if in_tail else "REPAIR truncate"
            note = f"{message}; {why}: dropped {len(data) - cut_at} bytes from byte {cut_at}"
            if dropped:
                note += f", including intact entries seq {', '.join(map(str, dropped))}"
            if later:
                note += f"; later segments set aside as *.dropped: {', '.join(f.name for f in later)}"
            if log is not None:
                log(note)
        state.entries(scan.entries, scan.version)
        del data
        if cut_at >= 0:
            truncated = sp.stat().st_size - cut_at
            with sp.open("r+b") as f:
                f.truncate(cut_at)
                f.flush()
                os.fsync(f.fileno())
            for _, later_file in files[i + 1 :]:
                later_file.rename(later_file.with_name(later_file.name + ".dropped"))
            break
        expected = scan.entries[-1].seq + 1 if scan.entries else first
    last_seq = max(state.last_seq, expected - 1)  # an empty newest segment: the one before ended there
    if after_seq > last_seq:
        raise JournalDamaged(
            f"{p}: the snapshot holds entries through {after_seq}, the journal ends at entry {last_seq}: entries "
            "a snapshot covered are missing from the journal (a snapshot is written only after the journal "
            "entries it covers were fsynced). Nothing more was replayed."
        )
    if not note:
        note = f"{p}: format {version}, entries {first_needed}..{last_seq} replayed cleanly"
        if after_seq:
            note += f" after the snapshot at entry {after_seq}"
    return Recovery(
        last_seq,
        state.batches,
        state.transfers,
        state.admin_ops,
        truncated,
        note,
        version,
        min(durable, last_seq),
        dropped,
        state.header,
    )


class _Replay:
    """What ``recover`` does with the intact entries of each segment, in order."""

    def __init__(
        self,
        p: Path,
        apply_batch: Callable[[np.ndarray, int], np.ndarray],
        apply_admin: Callable[[AdminEntry], None],
        check_header: Callable[[JournalHeader], None] | None,
        note_seq: Callable[[int], None] | None,
        after_seq: int,
        replay_output: Callable[[int, np.ndarray, np.ndarray], None] | None,
        first_needed: int,
    ) -> None:
        self.p, self.apply_batch, self.apply_admin, self.check_header = p, apply_batch, apply_admin, check_header
        self.note_seq, self.after_seq, self.replay_output, self.first_needed = (
            note_seq,
            after_seq,
            replay_output,
            first_needed,
        )
        self.batches = self.transfers = self.admin_ops = self.last_seq = 0
        self.header: JournalHeader | None = None
        self._admin = msgspec.msgpack.Decoder(AdminEntry)

    def entries(self, entries: list[_Entry], version: int) -> None:
        p = self.p
        clock_bytes = _CLOCK.size if version == 2 else 0
        for e in entries:
            self.last_seq = e.seq
            if (e.kind == KIND_HEADER) != (e.seq == 1) and (e.kind == KIND_HEADER or self.check_header is not None):
                # A good checksum on a misplaced header, or entries without a header, is not a torn
                # write: this file was not written by a server that checks headers. Refuse, untouched.
                raise ValueError(
                    f"{p}: entry {e.seq} is {'a header' if e.kind == KIND_HEADER else 'not a header'}; a server "
                    "journal starts with exactly one header entry. Refusing to replay it; use a new journal path."
                )
            if e.kind == KIND_HEADER:
                self.header = msgspec.msgpack.decode(e.payload, type=JournalHeader)
                if self.check_header is not None:
                    self.check_header(self.header)
                continue
            if e.seq < self.first_needed:
                continue
            if e.kind == KIND_BATCH:
                body = len(e.payload) - clock_bytes
                if body < 0 or body % _RECORD:
                    raise JournalMismatch(f"{p}: batch entry {e.seq} has a payload of {len(e.payload)} bytes")
                n = body // _RECORD
                clock = _CLOCK.unpack_from(e.payload)[0] if clock_bytes else -1
                batch = np.frombuffer(e.payload, dtype=TRANSFER_DTYPE, count=n, offset=clock_bytes).copy()
                recorded = np.frombuffer(e.payload, dtype=CODE_DTYPE, offset=clock_bytes + n * TRANSFER_DTYPE.itemsize)
                if e.seq <= self.after_seq:  # the snapshot holds its effect; only a consumer behind it needs it
                    if self.replay_output is not None:
                        self.replay_output(e.seq, batch, recorded.copy())
                    continue
                if self.note_seq is not None:
                    self.note_seq(e.seq)  # before the batch is applied (hooks with durable output key on it)
                replayed = self.apply_batch(batch, clock)
                if not np.array_equal(replayed, recorded):
                    where = int(np.flatnonzero(replayed != recorded)[0])
                    raise JournalMismatch(
                        f"{p}: replaying batch entry {e.seq} gave code {int(replayed[where])} for transfer {where}, "
                        f"the journal recorded {int(recorded[where])}; the server's profile, scenario, accounts or "
                        "seed differ from the run that wrote this journal"
                    )
                self.batches += 1
                self.transfers += n
            elif e.kind == KIND_ADMIN and e.seq > self.after_seq:
                self.apply_admin(self._admin.decode(e.payload))
                self.admin_ops += 1
