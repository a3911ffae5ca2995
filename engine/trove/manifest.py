"""The trove's manifest: which files hold which rows, and how far the trove is durable.

``trove.json`` is the commit point. A segment or run file is written to a temporary name,
fsynced and renamed into place, and only then listed here (the manifest itself is written the
same way); a file on disk that the manifest does not list is not part of the trove and is never
read. Each file's size and digest (SHA-256; BLAKE2b before) are recorded, and each file's Parquet footer carries
the trove's id and the segment's id, so a damaged, truncated or foreign file is named, not read.

Format history (``FORMAT``): 1 = first version (one partition per time period); 2 = partitions
of one or more periods (a row floor), listed in ``partition_starts``. Format 1 is read and
upgraded (each of its partitions is one period).
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

FORMAT = 2
MANIFEST_NAME = "trove.json"
#: Parquet footer key-value metadata written into every trove file.
META_TROVE_ID = b"cbdc_trove_id"
META_SEGMENT_ID = b"cbdc_trove_segment"


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One Parquet file: path relative to the trove, its ordering, size and digest."""

    path: str
    #: "arrival" (as the sequencer applied them), "payer" or "payee" (sorted by that account, then time).
    ordering: str
    bytes: int
    #: The file's digest: BLAKE2b-128 in troves written before, SHA-256 since (with the CPU's SHA
    #: instructions 4-5x faster than hashlib's BLAKE2b here, 1.7 against 0.4 GB/s: the digest was
    #: ~8% of the writer's and a merge's CPU). Exactly one of the three is set: intermediate files
    #: (read once by a merge, then deleted) record ``footer_sha256`` instead (``files`` docstring).
    blake2b: str = ""
    sha256: str = ""
    #: SHA-256 of the Parquet footer and trailer alone (``files.footer_digest``), for files without
    #: a whole-file digest: their pages' CRC-32s are verified when read instead.
    footer_sha256: str = ""
    #: Parquet codec of its column chunks ("zstd" for final runs, ``intermediate_compression`` for
    #: runs a merge will read again); "" in troves written before it was recorded.
    codec: str = ""


class Segment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A set of rows of one partition, held in one file per ordering.

    ``kind`` "run": one file sorted by payer and one by payee (what the writer and the compactor
    write); "ingest": one arrival-ordered file (the writer's, for a partition that will be merged).
    ``seq_ranges``: the segment holds every row of its partition from the batches in these
    inclusive (first, last) batch_seq ranges, and no other rows.
    """

    id: int
    kind: str
    #: The first time period of the segment's partition (``Manifest.partition_starts``).
    partition: int
    rows: int
    min_timestamp_ns: int
    max_timestamp_ns: int
    seq_ranges: list[tuple[int, int]]
    files: list[FileEntry]
    tier: int = 0

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def file(self, ordering: str) -> FileEntry:
        """The file sorted by ``ordering`` (an ingest segment's one arrival-ordered file serves all)."""
        for f in self.files:
            if f.ordering == ordering:
                return f
        return self.files[0]


class Manifest(msgspec.Struct, forbid_unknown_fields=True):
    """The committed state of a trove."""

    trove_id: str
    partition_ns: int
    format: int = FORMAT
    next_segment_id: int = 1
    #: Every row of every batch with batch_seq <= this is in a listed segment or expired.
    durable_through_seq: int = 0
    segments: list[Segment] = msgspec.field(default_factory=list)
    #: Partitions below this one were expired by retention (their rows are gone on purpose).
    expired_below_partition: int = -(2**62)
    rows_expired: int = 0
    #: (partition, batch ranges) of segments lost or damaged: to be rebuilt from the journal.
    to_rebuild: list[tuple[int, list[tuple[int, int]]]] = msgspec.field(default_factory=list)
    #: Format 2: the first period of every partition, ascending; a partition runs up to the next
    #: start (``expired_below_partition`` is a period too).
    partition_starts: list[int] = msgspec.field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    def partition_end(self, partition: int) -> int:
        """The first period after ``partition`` (the next partition's start; the newest: one period)."""
        i = bisect.bisect_right(self.partition_starts, partition)
        return self.partition_starts[i] if i < len(self.partition_starts) else partition + 1

    def durable_seq(self) -> int:
        """Every journal entry up to this one is in the trove (or expired): the trove's watermark,
        ``durable_through_seq`` held back below any lost segment still to be rebuilt."""
        firsts = [lo for _, ranges in self.to_rebuild for lo, _ in ranges]
        return min([self.durable_through_seq + 1, *firsts]) - 1


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, coalesced inclusive ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name for ``path``'s new content, renamed over ``path`` (directory fsynced) when
    the block succeeds and removed when it fails. The block writes and fsyncs the file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, rename, fsync the directory."""
    with replacing(path) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load_manifest(root: Path) -> Manifest | None:
    """The manifest of the trove at ``root``, or None if there is none yet."""
    path = root / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path} is not a trove manifest ({exc}); point at a trove directory or a new one") from exc
    if manifest.format == 1:  # every partition was one period
        manifest.partition_starts = sorted(
            {s.partition for s in manifest.segments} | {p for p, _ in manifest.to_rebuild}
        )
        manifest.format = FORMAT
    if manifest.format != FORMAT:
        raise ValueError(f"{path}: trove format {manifest.format}, this version reads formats 1 and {FORMAT}")
    return manifest


def save_manifest(root: Path, manifest: Manifest) -> None:
    write_atomic(root / MANIFEST_NAME, msgspec.json.encode(manifest))
