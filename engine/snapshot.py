"""Snapshot files: the ledger's and every hook's state at one journal entry, checksummed.

Recovery from a snapshot reads the state as of journal entry ``journal_seq`` and replays only
the entries after it (``engine.journal.recover(after_seq=...)``), so restart time and memory
follow the snapshot interval, not the journal's age. The file is generic over named arrays:
whatever ``state_arrays()`` of the ledger and of each hook return (live references) is written
chunk by chunk, and read back in place into the same names; ``state_scalars()`` (counters, a
chain head, the sequencer clock) travel as msgpack. A change of state layout (packed columns, a
side table) needs no change here, only its owner's ``state_arrays``.

Layout (little-endian)::

    magic    8s  b"CBDCSNP1"
    data         every array's bytes, in footer order, in chunks of chunk_bytes (the last shorter)
    footer       msgpack SnapshotMeta: journal seq, the journal header (build fields), per part
                 (owner "ledger" or a hook name) its scalars and its arrays (name, dtype, shape,
                 one CRC-32 per chunk)
    trailer  20  footer length u64, footer CRC-32 u32, b"CBDCSNPE"

Every byte is covered: the magics by comparison, the data by its chunk's CRC, the footer by its
CRC, the trailer's length by the exact file size it implies. Writing (``write_snapshot``):
a temporary name, every byte written, fsync; then the fsyncs the snapshot depends on (the
journal segment it covers, hook output files it records positions of); then rename to
``snap-<seq, 20 digits>.cbdcsnap`` and fsync the directory. So a snapshot under its final name is
whole and every entry it covers is durable; a crash at any point leaves at most a temporary file,
which readers ignore and the next writer removes.

A damaged snapshot is refused by name (``SnapshotDamaged``) and recovery falls back to the one
before it (``engine.server.recovery``).

Version history (``FORMAT_VERSION``): 1 (issue 15) this layout.
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np

from engine.journal import JournalHeader, OsIO
from engine.options import parse_count, parse_seconds

#: Snapshot format version; history in the module docstring.
FORMAT_VERSION = 1
MAGIC = b"CBDCSNP1"
END_MAGIC = b"CBDCSNPE"
_TRAILER = struct.Struct("<QI8s")
#: Bytes per checksummed chunk: small enough that a flipped byte is located, large enough that
#: the CRC per chunk costs nothing (zlib.crc32 releases the GIL above a few KB).
CHUNK_BYTES = 4 << 20
SUFFIX = ".cbdcsnap"
PARTIAL = ".partial"


@dataclass(frozen=True, slots=True)
class SnapshotSchedule:
    """When to snapshot: after ``every_payments`` payments sequenced or ``every_s`` seconds (0 = never)."""

    every_payments: int = 0
    every_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> SnapshotSchedule:
        """``"5M,600s"``: 5 million payments or 600 seconds, whichever first; ``"off"``: never.

        A count (``5000000``, ``5M``, ``300k``) is payments; a duration with its unit (``600s``,
        ``10m``, ``1h``) is time: the vocabulary of every other option (``engine.options``).
        """
        if text.strip() == "off":
            return cls()
        payments, seconds = 0, 0.0
        for item in text.split(","):
            try:
                payments = parse_count(item)
                ok = payments > 0
            except argparse.ArgumentTypeError:
                try:
                    seconds = parse_seconds(item)
                    ok = seconds > 0 and not item.strip()[-1:].isdigit()
                except argparse.ArgumentTypeError:
                    ok = False
            if not ok:
                raise ValueError(
                    f"snapshot_every: {item.strip()!r} is neither payments (5000000, 5M) nor a duration with its "
                    "unit (600s, 10m); give one or both, comma-separated, or 'off'"
                )
        return cls(payments, seconds)

    @property
    def enabled(self) -> bool:
        return bool(self.every_payments or self.every_s)


class ArrayMeta(msgspec.Struct, array_like=True, frozen=True):
    name: str
    dtype: str  # numpy dtype.str, e.g. "<i8"
    shape: list[int]
    crcs: list[int]  # CRC-32 of each chunk of the array's bytes


class PartMeta(msgspec.Struct, frozen=True):
    owner: str  # "ledger" or a hook's name
    scalars: dict[str, Any]
    arrays: list[ArrayMeta]


class SnapshotMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    journal_seq: int  # the state is that after applying journal entries 1..journal_seq
    header: JournalHeader  # how the ledger was built: must match the server restoring it
    created_unix_ns: int
    chunk_bytes: int
    data_bytes: int
    parts: list[PartMeta]


class SnapshotDamaged(ValueError):
    """A snapshot file failed a check; the message names the file and the damaged part."""


class StateOwner(Protocol):
    """The ledger and each hook: its state as live arrays and small scalars (``engine.hooks.base``)."""

    def state_arrays(self) -> dict[str, np.ndarray]: ...

    def state_scalars(self) -> dict[str, Any]: ...

    def per_account_arrays(self) -> tuple[str, ...]: ...

    def restore_scalars(self, scalars: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Part:
    """One owner's state captured for writing: live arrays, scalars already copied."""

    owner: str
    arrays: dict[str, np.ndarray]
    scalars: dict[str, Any]


def capture(owners: Sequence[tuple[str, StateOwner]]) -> list[Part]:
    """The parts to write, on the sequencer (arrays by reference: a forked child or the caller
    must write them before they change)."""
    return [
        Part(name, o.state_arrays(), msgspec.msgpack.decode(msgspec.msgpack.encode(o.state_scalars())))
        for name, o in owners
    ]


def snapshot_path(directory: str | os.PathLike[str], seq: int) -> Path:
    return Path(directory) / f"snap-{seq:020d}{SUFFIX}"


def list_snapshots(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(journal seq, path) of the snapshot files in ``directory``, newest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        digits = p.name.removeprefix("snap-").removesuffix(SUFFIX)
        if p.name.startswith("snap-") and p.name.endswith(SUFFIX) and len(digits) == 20 and digits.isdigit():
            found.append((int(digits), p))
    return sorted(found, reverse=True)


#: ``(owner, array name, first byte, end byte) -> those bytes`` (uint8), in write order.
ChunkReader = Callable[[str, str, int, int], np.ndarray]


class SnapshotIO(OsIO):
    """The file operations a snapshot is written through (tests record them for power cuts)."""

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _bytes_of(array: np.ndarray) -> np.ndarray:
    if not array.flags.c_contiguous:
        raise ValueError("snapshot arrays must be C-contiguous")
    return array.reshape(-1).view(np.uint8)


def _chunks(nbytes: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    for start in range(0, nbytes, chunk_bytes):
        yield start, min(start + chunk_bytes, nbytes)


def write_snapshot(
    directory: str | os.PathLike[str],
    seq: int,
    header: JournalHeader,
    parts: Sequence[Part],
    *,
    sync_fds: Sequence[int] = (),
    sync_paths: Sequence[Path] = (),
    io: SnapshotIO | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    read_chunk: ChunkReader | None = None,
) -> tuple[Path, int]:
    """Write ``parts`` as the snapshot at journal entry ``seq``; returns (its path, its bytes).

    Touches only the arrays, the files and C code (zlib, msgspec, os): it is what a forked child
    runs. ``sync_fds``/``sync_paths`` are fsynced before the rename: what the snapshot depends on.
    ``read_chunk(owner, name, lo, hi)``, if given, supplies bytes ``lo..hi`` of an array instead of
    the array itself, in write order (``engine.copy_on_update`` hands over copies made on the
    sequencer).
    """
    io = io or SnapshotIO()
    d = Path(directory)
    final = snapshot_path(d, seq)
    tmp = d / f"{final.name}{PARTIAL}-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:

        def put(data: bytes | np.ndarray) -> None:
            view = memoryview(data).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
            while view:
                view = view[io.write(fd, view) :]

        put(MAGIC)
        metas = []
        data_bytes = 0
        for part in parts:
            arrays = []
            for name, array in part.arrays.items():
                raw = _bytes_of(array)
                crcs = []
                for lo, hi in _chunks(raw.size, chunk_bytes):
                    piece = raw[lo:hi] if read_chunk is None else read_chunk(part.owner, name, lo, hi)
                    crcs.append(zlib.crc32(piece))  # type: ignore[arg-type]
                    put(piece)
                data_bytes += raw.size
                arrays.append(ArrayMeta(name, array.dtype.str, list(array.shape), crcs))
            metas.append(PartMeta(part.owner, part.scalars, arrays))
        meta = SnapshotMeta(FORMAT_VERSION, seq, header, time.time_ns(), chunk_bytes, data_bytes, metas)
        footer = msgspec.msgpack.encode(meta)
        put(footer)
        put(_TRAILER.pack(len(footer), zlib.crc32(footer), END_MAGIC))
        io.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    for other in sync_fds:
        io.fsync(other)
    for path in sync_paths:
        if path.is_file():
            pfd = os.open(path, os.O_RDONLY)
            try:
                io.fsync(pfd)
            finally:
                os.close(pfd)
    io.replace(tmp, final)
    io.fsync_dir(d)
    return final, size


def read_meta(path: str | os.PathLike[str]) -> SnapshotMeta:
    """The footer of the snapshot at ``path``, after every check that does not read the data."""
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        magic = f.read(len(MAGIC))
        if size < len(MAGIC) + _TRAILER.size or magic != MAGIC:
            raise SnapshotDamaged(f"snapshot {p}: not a snapshot file (magic {magic!r}, {size} bytes)")
        f.seek(size - _TRAILER.size)
        footer_len, footer_crc, end = _TRAILER.unpack(f.read(_TRAILER.size))
        if end != END_MAGIC or footer_len > size - len(MAGIC) - _TRAILER.size:
            raise SnapshotDamaged(f"snapshot {p}: trailer damaged (end magic {end!r}, footer length {footer_len})")
        f.seek(size - _TRAILER.size - footer_len)
        footer = f.read(footer_len)
    if zlib.crc32(footer) != footer_crc:
        raise SnapshotDamaged(f"snapshot {p}: footer checksum mismatch (the metadata is damaged)")
    try:
        meta = msgspec.msgpack.decode(footer, type=SnapshotMeta)
    except msgspec.DecodeError as exc:
        raise SnapshotDamaged(f"snapshot {p}: footer does not decode ({exc})") from None
    if meta.format != FORMAT_VERSION:
        raise SnapshotDamaged(f"snapshot {p}: format {meta.format}, this version reads {FORMAT_VERSION}")
    total = 0
    for part in meta.parts:
        for a in part.arrays:
            nbytes = math.prod(a.shape) * np.dtype(a.dtype).itemsize
            if len(a.crcs) != math.ceil(nbytes / meta.chunk_bytes):
                raise SnapshotDamaged(f"snapshot {p}: {part.owner}.{a.name} lists {len(a.crcs)} chunk checksums")
            total += nbytes
    if total != meta.data_bytes or len(MAGIC) + total + footer_len + _TRAILER.size != size:
        raise SnapshotDamaged(f"snapshot {p}: {size} bytes, but its footer describes {total} bytes of data")
    return meta


def _walk(p: Path, meta: SnapshotMeta, targets: dict[str, dict[str, np.ndarray]] | None) -> None:
    """Read every chunk, check its CRC; with ``targets`` (owner -> live arrays) read into them."""
    scratch = np.empty(meta.chunk_bytes, dtype=np.uint8) if targets is None else None
    with p.open("rb", buffering=0) as f:
        f.seek(len(MAGIC))
        for part in meta.parts:
            for a in part.arrays:
                nbytes = math.prod(a.shape) * np.dtype(a.dtype).itemsize
                dest = None if targets is None else _bytes_of(targets[part.owner][a.name])
                for k, (lo, hi) in enumerate(_chunks(nbytes, meta.chunk_bytes)):
                    view: Any = dest[lo:hi] if dest is not None else scratch[: hi - lo]  # type: ignore[index]
                    got = f.readinto(memoryview(view))
                    if got != hi - lo or zlib.crc32(view) != a.crcs[k]:
                        raise SnapshotDamaged(
                            f"snapshot {p}: {part.owner}.{a.name} chunk {k} (array bytes {lo}..{hi}) checksum mismatch"
                        )


def verify(path: str | os.PathLike[str]) -> SnapshotMeta:
    """Every check, data included, streaming (one chunk of memory); returns the footer."""
    meta = read_meta(path)
    _walk(Path(path), meta, None)
    return meta


def load_into(path: str | os.PathLike[str], meta: SnapshotMeta, owners: dict[str, StateOwner]) -> None:
    """Restore ``owners`` (by part name) from the snapshot: scalars first, then arrays in place."""
    p = Path(path)
    if set(owners) != {part.owner for part in meta.parts}:
        raise SnapshotDamaged(
            f"snapshot {p} holds state of {sorted(part.owner for part in meta.parts)}, this server has {sorted(owners)}"
        )
    targets = {}
    for part in meta.parts:
        owner = owners[part.owner]
        owner.restore_scalars(part.scalars)
        live = owner.state_arrays()
        saved = {a.name: a for a in part.arrays}
        if set(live) != set(saved):
            raise SnapshotDamaged(f"snapshot {p}: {part.owner} arrays {sorted(saved)}, this build has {sorted(live)}")
        for name, array in live.items():
            a = saved[name]
            if np.dtype(a.dtype) != array.dtype or list(array.shape) != a.shape:
                raise SnapshotDamaged(
                    f"snapshot {p}: {part.owner}.{name} is {a.dtype}{a.shape}, "
                    f"this build {array.dtype.str}{list(array.shape)}"
                )
        targets[part.owner] = live
    _walk(p, meta, targets)
