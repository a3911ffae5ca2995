"""Writing a trove file (``engine.trove.files``): incremental writeback (the file synced as it is
written, so no fsync carries a whole file beside the journal's), same bytes and digest either way."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.trove.files import _BUFFER_BYTES, _HashingFile, digest, write_parquet


class _Recorder(io.BytesIO):
    """A file whose descriptor is fake: ``_HashingFile`` only flushes it and passes ``fileno`` on."""

    def fileno(self) -> int:
        return 42


def test_the_sink_syncs_each_time_sync_bytes_were_written_since_the_last(rng) -> None:
    chunks = [rng.bytes(int(n)) for n in rng.integers(1, 300_000, size=40)]
    synced_at: list[int] = []
    f = _Recorder()
    sink = _HashingFile(f, sync_bytes=250_000, sync=lambda fd: synced_at.append((fd, f.tell())[1]))
    for c in chunks:
        sink.write(c)
    # Where a sync is due: after the first write that brings the unsynced bytes to sync_bytes.
    expected, unsynced, pos = [], 0, 0
    for c in chunks:
        pos += len(c)
        unsynced += len(c)
        if unsynced >= 250_000:
            expected.append(pos)
            unsynced = 0
    assert synced_at == expected and sink.syncs == len(expected) > 0
    assert f.getvalue() == b"".join(chunks) and sink.tell() == len(f.getvalue())
    assert sink.hexdigest() == hashlib.sha256(f.getvalue()).hexdigest()


def test_without_sync_bytes_the_sink_never_syncs(rng) -> None:
    sink = _HashingFile(_Recorder(), sync_bytes=0, sync=lambda fd: pytest.fail("synced"))
    for _ in range(20):
        sink.write(rng.bytes(1 << 20))
    assert sink.syncs == 0


def _write(root: Path, name: str, table: pa.Table, sync_bytes: int):
    return write_parquet(
        root,
        name,
        "payer",
        table.to_batches(max_chunksize=200_000),
        table.schema,
        trove_id="t",
        segment_id=1,
        row_group_rows=100_000,
        compression="none",
        sync_bytes=sync_bytes,
    )


def test_a_file_written_with_incremental_writeback_is_the_same_file(tmp_path: Path, rng, monkeypatch) -> None:
    n = 1_500_000  # ~24 MB plain: several of pyarrow's 4 MB buffers reach the sink
    table = pa.table({"a": rng.integers(0, 1 << 62, n), "b": rng.integers(0, 1 << 62, n)})
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    synced, rows = _write(tmp_path, "synced.parquet", table, 1 << 20)
    during = len(calls)
    plain, _ = _write(tmp_path, "plain.parquet", table, 0)
    assert len(calls) == during  # sync_bytes=0: only the final fsync (os.fsync), no fdatasync
    # Every buffer pyarrow hands over (>= 1 MB each) is synced, but the last, which the final fsync covers.
    assert during >= synced.bytes // _BUFFER_BYTES - 1 >= 4
    assert rows == n and synced.bytes == plain.bytes
    assert synced.sha256 == digest(tmp_path / "synced.parquet") == plain.sha256
    assert pq.read_table(tmp_path / "synced.parquet").cast(table.schema).equals(table)  # columns are written not-null
