"""Writing and checking the trove's Parquet files (pyarrow, zstd, page checksums).

A file is written to ``NAME.tmp`` (its SHA-256 digest taken from the bytes as they are written:
``_HashingFile``), fsynced, then renamed into place and its directory fsynced
(``manifest.replacing``): a crash leaves either no file or a whole one (and a whole file that the
manifest does not yet list is simply not part of the trove).

Incremental writeback (``SYNC_BYTES``): the file is ``fdatasync``-ed every 8 MB as it is written,
not only once at the end. Why: the journal's fsync (every 10 ms under ``interval:10``, on the
sequencer's thread) shares the disk with the trove, and a trove fsync carries everything written
since the last one: with one fsync at the end, the whole file, dirty in the page cache
(``vm.dirty_background_ratio`` 10% of 24 GiB starts no writeback before ~2.4 GB). Measured with
``python -m benchmarks.trove_fsync_beside_journal --mb 200 --rounds 3`` (this 2-core VM: virtio
disk, ext4 without a journal, so no jbd2 commit ties the two files; shared machine, 2026-12-04):
a journal's 150 KB append + fsync every 10 ms had fsyncs of up to 53-70 ms beside a 210 MB file with one fsync
(1.6-4.0 ms alone), 6.3-9.7 ms with this one, in the same write time (0.44-0.72 s against
0.48-0.67 s). At ``--mb 18``, the size of a first flush's files at 300,000/s (14-18 MB), neither
stalls the journal (1.8-6.1 against 1.3-12.2 ms): it matters for merges, whose outputs reach ~2 GB (a 2^26-row run).
Durability is unchanged: the final fsync still precedes the rename, and the manifest lists the
file only after that.

Intermediate files (``whole_digest=False``: the writer's runs and the merges' below the last
tier, read once by a merge minutes later and deleted) get no whole-file SHA-256: the digest of
their Parquet footer (``FileEntry.footer_sha256``) instead, and every page's CRC-32 (written for
every file) is verified whenever a merge reads them (``compaction._RunReader``) and by a deep
check (``check_pages``). A damaged or foreign intermediate file is still reported by name, never
silently read: before a merge reads its sources, their size, footer digest, trove, segment and
rows are checked (``compaction.check_sources``), and a changed page fails its CRC
(tests/engine/test_trove_files.py, test_trove_merge.py). Stronger than before, when a merge
read them unverified (the whole-file digest was checked only by a deep check at open). Measured
in one process, alternated (shared machine, 2026-12-04, ``/tmp`` scripts, not kept): one 2^22-row
plain payer-sorted file written with and without the whole-file SHA-256, 8 rounds, medians 127
-> 106 ns a row (~40 ns a row for the writer's two files); a final merge of 8 plain 2^19-row
runs with and without verifying their pages' CRCs, 5 rounds, medians 707 -> 729 ns a row
merged (+22). Net ~20 ns a row less. Final (zstd) files, which stay, keep their whole-file SHA-256.
With nothing to hash, pyarrow writes an intermediate file itself (``pa.OSFile``: no copy of each
4 MB buffer into a Python bytes object on its way to the kernel), fdatasync-ed between slices of
whole row groups once ``SYNC_BYTES`` more reached the file: the same bytes (tested). One 2^22-row
plain file, 6 alternated rounds, medians 73 -> 59 ns a row (~28 for the writer's two files).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from engine.trove.manifest import META_SEGMENT_ID, META_TROVE_ID, FileEntry, replacing
from engine.trove.schema import COLUMNS, ROW_BYTES

if TYPE_CHECKING:
    import pyarrow as pa

_HASH_CHUNK = 1 << 22
#: pyarrow's buffer in front of ``_HashingFile``: its writes reach Python a few MB at a time.
_BUFFER_BYTES = 1 << 22
#: ``fdatasync`` the file whenever this many bytes were written since the last one (module
#: docstring, "Incremental writeback"); 0 = only the final fsync.
SYNC_BYTES = 1 << 23
#: Dictionary encoding only where values are few: on ids, times and amounts it falls back after
#: wasting a dictionary page per row group (measured: 37 -> 25 bytes/row on a payer-sorted file).
_DICTIONARY_COLUMNS = ["category", "operator", "code"]
#: Delta encoding for the columns that are sorted, or nearly, in a file's ordering (another ~2
#: bytes/row): its account and, within an account, the time and batch. Not the other account (in
#: a payer-sorted file the payee is random: its deltas are as wide as its values): measured on a
#: 2^20-row payer-sorted final file (zstd, 4,096-row groups), 0.96x the write CPU for +0.06 B/row
#: (shared machine, alternated, 9 rounds: ``delta_columns``).
_DELTA_SORTED = ["timestamp_ns", "batch_seq"]
#: Columns written without the file's codec: the dictionary-encoded ones (their pages are a few
#: bits a row already) and, per file, the account it is sorted by (delta-encoded: a few bits a row
#: too). Each compressed page costs zstd a context of its own (~a quarter of its CPU in a 4,096-row
#: final file's small pages). Measured on a 2^20-row payer-sorted final file (zstd, 4,096-row
#: groups; shared machine, alternated, 5-9 rounds): the dictionary columns 0.93x the write CPU for
#: +0.02 B/row, the file's account besides 0.88-0.94x in all for +0.04-0.07 B/row (25.79 -> 25.84
#: over 10^9 accounts, 24.20 -> 24.27 over 2*10^7). Not the other account: random in this ordering,
#: zstd still takes its high bytes when the accounts are fewer than 2^32 (+0.5 B/row uncompressed
#: over 2*10^7 accounts; nothing over 10^9).
_UNCOMPRESSED = ["category", "operator", "code"]


def column_compression(compression: str, ordering: str) -> dict[str, str]:
    """The codec of each column in a file sorted by ``ordering`` written with ``compression``: it,
    but for ``_UNCOMPRESSED`` and ``ordering``'s column."""
    return {name: "none" if name in _UNCOMPRESSED or name == ordering else compression for name in COLUMNS}


#: Byte-stream split (each value's bytes in separate streams: the high bytes of ids, amounts and
#: cells, alike from row to row, become runs) for every other column that is not dictionary-encoded:
#: the codec then finds long matches fast. Measured on 2^20-row final files (zstd, 4,096-row groups,
#: one process, medians of 5 alternated rounds, shared machine, 2026-12-04, a ``/tmp`` script,
#: not kept), against plain encoding of these columns: the encoding 0.76x
#: (payer-sorted) and 0.72x (payee-sorted) the CPU over 10^9 accounts, 0.68x and 0.74x over 2*10^7;
#: bytes 25.85 -> 24.03 and 28.03 -> 26.23 B/row (10^9 accounts), 24.27 -> 22.05 and 26.80 -> 24.79
#: (2*10^7); reading them back (pyarrow, all columns) no slower (21-28 against 28-76 ns/row, noisy).
#: A 2*10^7-row ``trove build`` over as many accounts: 51.08 -> 47.71 B/row, 22.1 -> 17.9 s of
#: CPU. Its lookups, ``python -m benchmarks.trove_lookup_cost --queries 200``, 4 rounds alternated
#: between the two troves: a person's day (column-first, warm) 2.8-3.2 -> 2.1-2.8 ms CPU, whole
#: row groups 5.6-6.9 -> 4.4-4.9 ms. DuckDB (2.0) reads it (tests/engine/test_trove_files.py); its
#: scans of the same payer-sorted files, one thread, medians of 4 alternated: a cell 339 -> 345 ms
#: CPU, a payee 280 -> 322, a device 449 -> 337, a category aggregate 765 -> 581.
_BYTE_STREAM_SPLIT = "BYTE_STREAM_SPLIT"


def delta_columns(ordering: str) -> dict[str, str]:
    """The columns a file sorted by ``ordering`` delta-encodes: the time, the batch and the account
    it is sorted by (``ordering``, when it names a column)."""
    return dict.fromkeys([*_DELTA_SORTED, ordering] if ordering in COLUMNS else _DELTA_SORTED, "DELTA_BINARY_PACKED")


def column_encodings(ordering: str) -> dict[str, str]:
    """Each column's encoding in a file sorted by ``ordering`` (not the plain files of codec "none"):
    ``delta_columns``, the dictionary columns' dictionaries, and byte-stream split for the rest."""
    delta = delta_columns(ordering)
    return {name: delta.get(name, _BYTE_STREAM_SPLIT) for name in COLUMNS if name not in _DICTIONARY_COLUMNS}


#: Min/max statistics only where a reader prunes by them: the account a file is sorted by (a
#: lookup's sparse index, ``query._LookupIndex``) and the time (DuckDB's scans filter on it).
#: Statistics on the other 9 columns prune nothing (each spans its whole range in every row group)
#: and cost their comparisons per value and their footer bytes. Measured on a 2^20-row
#: payer-sorted file, one process, alternated, 7 rounds (shared machine): with required columns
#: (``file_schema``) as well, 0.65x the write CPU of a plain file (16,384-row groups; 0.80x the
#: statistics alone, 0.68x the required columns alone) and 0.78x of a zstd final file (4,096-row
#: groups); a 2*10^7-row ``trove build``'s footers 10.65 -> 7.09 MB, its lookups' CPU no higher
#: (``benchmarks.trove_lookup_cost``, 6 rounds each: 2.8-3.7 against 3.3-4.2 ms warm).
STATISTICS_COLUMNS = ["timestamp_ns", "payer", "payee"]


def file_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as the trove writes it to a file: every column *required* (not nullable).

    A trove row never has a null, and a nullable Parquet column carries definition levels: the
    writer encodes one per value (``LevelEncoder``) and every reader decodes them again. Readers
    get the columns back as not-null fields; ``nullable`` gives a table the trove's
    ``arrow_schema`` (nullable, as older files are) so tables from old and new files concatenate.
    """
    import pyarrow as pa

    return pa.schema([f.with_nullable(False) for f in schema], metadata=schema.metadata)


def nullable(table: pa.Table) -> pa.Table:
    """``table`` with every field nullable (a zero-copy cast): files' required columns
    (``file_schema``) as the trove's ``arrow_schema`` has them."""
    if all(f.nullable for f in table.schema):
        return table
    import pyarrow as pa

    return table.cast(pa.schema([f.with_nullable(True) for f in table.schema], metadata=table.schema.metadata))


class _HashingFile:
    """A binary file that hashes what it is given as it writes it: a file's digest without reading
    it back. pyarrow writes to it through a ``pa.BufferedOutputStream`` (``_BUFFER_BYTES``), so it
    sees a few large writes per file, not one per page header. Every ``sync_bytes`` written it
    hands them to the kernel and ``sync``s the descriptor (incremental writeback; 0 = never)."""

    def __init__(self, f: BinaryIO, *, sync_bytes: int = 0, sync: Callable[[int], None] | None = None) -> None:
        self._f, self._hash, self._pos, self.closed = f, hashlib.sha256(), 0, False
        self._sync_bytes = sync_bytes
        self._sync: Callable[[int], None] = sync if sync is not None else getattr(os, "fdatasync", os.fsync)
        self._unsynced = 0
        #: ``sync`` calls made while writing (the caller's final fsync not counted).
        self.syncs = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._pos += len(data)
        n = self._f.write(data)
        self._unsynced += len(data)
        if self._sync_bytes and self._unsynced >= self._sync_bytes:
            self._f.flush()
            self._sync(self._f.fileno())
            self._unsynced = 0
            self.syncs += 1
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._f.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True  # the caller closes (and fsyncs) the file itself

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class CorruptSegment(ValueError):
    """A trove file is missing, damaged or not this trove's; the message names it, ``path`` is it."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def digest(path: Path, algorithm: str = "sha256") -> str:
    """The file's hex digest (``FileEntry.sha256``, or ``blake2b`` for files of older troves)."""
    h = hashlib.blake2b(digest_size=16) if algorithm == "blake2b" else hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


#: Parquet's trailer: the footer's length (4 bytes, little-endian), then the magic.
_TRAILER_BYTES = 8
_MAGIC = b"PAR1"


def footer_digest(path: Path, size: int | None = None) -> str:
    """The SHA-256 of a Parquet file's footer and trailer (``FileEntry.footer_sha256``): what
    identifies an intermediate file (its row groups' offsets, sizes and statistics, its trove and
    segment id) without reading its pages. Raises CorruptSegment naming the file if it has no
    Parquet trailer."""
    with path.open("rb") as f:
        if size is None:
            size = f.seek(0, os.SEEK_END)
        if size < _TRAILER_BYTES + len(_MAGIC):
            raise CorruptSegment(f"trove file {path} has {size} bytes: too short for a Parquet file", path=path)
        f.seek(size - _TRAILER_BYTES)
        tail = f.read(_TRAILER_BYTES)
        n = int.from_bytes(tail[:4], "little")
        if tail[4:] != _MAGIC or n + _TRAILER_BYTES + len(_MAGIC) > size:
            raise CorruptSegment(f"trove file {path} has no Parquet footer (its last 8 bytes are {tail!r})", path=path)
        f.seek(size - _TRAILER_BYTES - n)
        footer = f.read(n)
    return hashlib.sha256(footer + tail).hexdigest()


def check_pages(path: Path, *, read_rows: int = 1 << 16) -> None:
    """Read every page of the file, verifying its CRC-32; CorruptSegment naming the file if one fails."""
    import pyarrow.parquet as pq

    try:
        for _ in pq.ParquetFile(path, page_checksum_verification=True).iter_batches(
            batch_size=read_rows, use_threads=False
        ):
            pass
    except OSError as exc:  # pyarrow: "could not verify page integrity, CRC checksum verification failed"
        raise CorruptSegment(
            f"trove file {path} failed its page checksums: its bytes changed ({exc})", path=path
        ) from None


def write_parquet(
    root: Path,
    rel_path: str,
    ordering: str,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    *,
    trove_id: str,
    segment_id: int,
    row_group_rows: int,
    compression: str = "zstd",
    sync_bytes: int = SYNC_BYTES,
    whole_digest: bool = True,
) -> tuple[FileEntry, int]:
    """Write ``batches`` as one Parquet file at ``root/rel_path``; its FileEntry and row count.

    ``compression``: zstd for files that stay (about half the bytes of lz4's at ~0.1 us more per
    row to write and to read); a cheaper codec for files a merge will soon read and delete
    (``TroveConfig.intermediate_compression``). ``sync_bytes``: incremental writeback (module
    docstring); the file is fsynced at the end whatever it is.
    """
    import pyarrow as pa

    path = root / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    # "none": the cheapest file to write and to read again, for one a merge reads once: no codec
    # and plain encoding (dictionaries and delta encoding cost as much as lz4 to make).
    plain = compression == "none"
    meta = {META_TROVE_ID: trove_id.encode(), META_SEGMENT_ID: str(segment_id).encode()}
    required = file_schema(schema)
    options: dict[str, Any] = {
        "compression": compression if plain else column_compression(compression, ordering),
        "use_dictionary": False if plain else _DICTIONARY_COLUMNS,
        "column_encoding": None if plain else column_encodings(ordering),
        "write_page_checksum": True,
        "write_statistics": STATISTICS_COLUMNS,
    }
    with replacing(path) as tmp:
        if whole_digest:
            with tmp.open("wb") as f:
                # Hashed as written (``_HashingFile``), not read back after: the same digest of the
                # same bytes, without a second pass over the file.
                sink = _HashingFile(f, sync_bytes=sync_bytes)
                stream = pa.BufferedOutputStream(pa.PythonFile(sink, mode="w"), buffer_size=_BUFFER_BYTES)
                rows = _write_batches(stream, batches, required.with_metadata(meta), options, row_group_rows)
                stream.close()
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
                if size != sink.tell():
                    raise OSError(f"trove file {tmp}: {size} bytes on disk, {sink.tell()} written")
            entry = FileEntry(rel_path, ordering, size, sha256=sink.hexdigest(), codec=compression)
        else:
            # Nothing to hash: pyarrow writes the file itself (no copy of every buffer into a
            # Python bytes object on its way to the kernel), synced between row groups instead.
            raw = pa.OSFile(str(tmp), mode="w")
            stream = pa.BufferedOutputStream(raw, buffer_size=_BUFFER_BYTES)
            try:
                synced = 0

                def writeback() -> None:
                    nonlocal synced
                    if sync_bytes and raw.tell() - synced >= sync_bytes:
                        _fdatasync(raw.fileno())
                        synced = raw.tell()

                slice_rows = max(sync_bytes // (ROW_BYTES * row_group_rows), 1) * row_group_rows
                rows = _write_batches(
                    stream, batches, required.with_metadata(meta), options, row_group_rows, slice_rows, writeback
                )
                stream.flush()
                os.fsync(raw.fileno())
                size = raw.tell()
            finally:
                stream.close()  # and the file under it
            on_disk = tmp.stat().st_size
            if size != on_disk:
                raise OSError(f"trove file {tmp}: {on_disk} bytes on disk, {size} written")
            entry = FileEntry(rel_path, ordering, size, footer_sha256=footer_digest(tmp, size), codec=compression)
    return entry, rows


def _fdatasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


def _write_batches(
    stream: pa.NativeFile,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    options: dict[str, Any],
    row_group_rows: int,
    slice_rows: int = 0,
    after_slice: Callable[[], None] | None = None,
) -> int:
    """Write ``batches`` to ``stream`` as a Parquet file of ``schema``; the rows written. With
    ``slice_rows`` (a multiple of ``row_group_rows``: the row groups stay whole), ``after_slice``
    is called after each slice of that many rows of a batch (incremental writeback)."""
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(stream, schema, **options) as writer:
        for batch in batches:
            if not batch.schema.equals(schema, check_metadata=False):
                batch = batch.cast(schema)  # the same columns, declared not null
            step = slice_rows or max(batch.num_rows, 1)
            for offset in range(0, batch.num_rows, step):
                writer.write_batch(batch.slice(offset, step), row_group_size=row_group_rows)
                if after_slice is not None:
                    after_slice()
            rows += batch.num_rows
    return rows


def check_file(root: Path, entry: FileEntry, *, trove_id: str, segment_id: int, rows: int, deep: bool) -> None:
    """Raise CorruptSegment naming the file unless it is this trove's, whole (and, if ``deep``, unaltered)."""
    import pyarrow.parquet as pq

    path = root / entry.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptSegment(f"trove file {path} is missing", path=path) from None
    if size != entry.bytes:
        raise CorruptSegment(f"trove file {path} has {size} bytes, the manifest recorded {entry.bytes}", path=path)
    try:
        meta = pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises several types for a bad footer
        raise CorruptSegment(f"trove file {path} has no readable Parquet footer ({exc})", path=path) from None
    kv = meta.metadata or {}
    if kv.get(META_TROVE_ID) != trove_id.encode() or kv.get(META_SEGMENT_ID) != str(segment_id).encode():
        raise CorruptSegment(
            f"trove file {path} belongs to another trove or segment (footer says trove "
            f"{kv.get(META_TROVE_ID)!r} segment {kv.get(META_SEGMENT_ID)!r}; expected {trove_id!r} {segment_id})",
            path=path,
        )
    if meta.num_rows != rows:
        raise CorruptSegment(f"trove file {path} has {meta.num_rows} rows, the manifest recorded {rows}", path=path)
    if entry.footer_sha256 and not (entry.sha256 or entry.blake2b):
        # An intermediate file (``write_parquet``'s ``whole_digest=False``): its footer's digest on
        # every check (a few KB read; a merge, a query and an open all see a changed footer), every
        # page's CRC when ``deep`` (a merge verifies them as it reads: ``compaction._RunReader``).
        if footer_digest(path, size) != entry.footer_sha256:
            raise CorruptSegment(
                f"trove file {path} does not match its recorded footer digest: its bytes changed", path=path
            )
        if deep:
            check_pages(path)
    elif deep:
        algorithm, recorded = ("sha256", entry.sha256) if entry.sha256 else ("blake2b", entry.blake2b)
        if digest(path, algorithm) != recorded:
            raise CorruptSegment(
                f"trove file {path} does not match its recorded {algorithm} digest: its bytes changed", path=path
            )
