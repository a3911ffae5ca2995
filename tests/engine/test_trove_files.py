"""Writing a trove file (``engine.trove.files``): incremental writeback (the file synced as it is
written, so no fsync carries a whole file beside the journal's), same bytes and digest either way;
the encodings of final files, which every reader must read; intermediate files' footer digest and
page checksums."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.records import MAX_BATCH
from engine.trove.bench import seeded_batches
from engine.trove.files import (
    _BUFFER_BYTES,
    CorruptSegment,
    _HashingFile,
    check_file,
    check_pages,
    column_encodings,
    digest,
    footer_digest,
    write_parquet,
)
from engine.trove.schema import COLUMNS, account_order, arrow_schema, concat_rows, rows_of
from tests.engine.test_trove import flip_a_data_byte


class _Recorder(io.BytesIO):
    """A file whose descriptor is fake: ``_HashingFile`` only flushes it and passes ``fileno`` on."""

    def fileno(self) -> int:
        return 42


@pytest.fixture
def fdatasync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors ``os.fdatasync`` is called with during the test (the calls still sync)."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


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


def _write(root: Path, name: str, table: pa.Table, ordering: str = "payer", *, chunk_rows=None, **options):
    """``table`` written as trove "t"'s file ``root/name`` (segment 1, 4,096-row groups unless
    ``options`` say otherwise), in batches of ``chunk_rows``."""
    return write_parquet(
        root,
        name,
        ordering,
        table.to_batches(max_chunksize=chunk_rows),
        table.schema,
        trove_id="t",
        **{"segment_id": 1, "row_group_rows": 4_096, **options},
    )


def test_a_file_written_with_incremental_writeback_is_the_same_file(tmp_path: Path, rng, fdatasync_calls) -> None:
    n = 1_500_000  # ~24 MB plain: several of pyarrow's 4 MB buffers reach the sink
    table = pa.table({"a": rng.integers(0, 1 << 62, n), "b": rng.integers(0, 1 << 62, n)})
    calls = fdatasync_calls
    options = {"chunk_rows": 200_000, "row_group_rows": 100_000, "compression": "none"}
    synced, rows = _write(tmp_path, "synced.parquet", table, sync_bytes=1 << 20, **options)
    during = len(calls)
    plain, _ = _write(tmp_path, "plain.parquet", table, sync_bytes=0, **options)
    assert len(calls) == during  # sync_bytes=0: only the final fsync (os.fsync), no fdatasync
    # Every buffer pyarrow hands over (>= 1 MB each) is synced, but the last, which the final fsync covers.
    assert during >= synced.bytes // _BUFFER_BYTES - 1 >= 4
    assert rows == n and synced.bytes == plain.bytes
    assert synced.sha256 == digest(tmp_path / "synced.parquet") == plain.sha256
    assert pq.read_table(tmp_path / "synced.parquet").cast(table.schema).equals(table)  # columns are written not-null


def test_an_intermediate_file_is_written_by_pyarrow_synced_as_it_goes_and_the_same_bytes(
    tmp_path: Path, fdatasync_calls
) -> None:
    """Without a whole-file digest pyarrow writes the file itself, synced once ``sync_bytes`` reached
    the file, between slices of whole row groups: the same bytes as the hashed path's."""
    table = _seeded_table(200_000, "payer")  # ~12 MB plain
    calls = fdatasync_calls
    written = {}
    for whole in (False, True):
        written[whole], rows = _write(
            tmp_path, f"{whole}.parquet", table, compression="none", sync_bytes=1 << 20, whole_digest=whole
        )
        assert rows == len(table)
        if not whole:
            # Synced as it went: each of pyarrow's buffers (_BUFFER_BYTES >= sync_bytes) but the last.
            assert len(calls) >= written[False].bytes // _BUFFER_BYTES - 1 >= 2
    assert (tmp_path / "False.parquet").read_bytes() == (tmp_path / "True.parquet").read_bytes()
    assert written[False].footer_sha256 == footer_digest(tmp_path / "True.parquet") and not written[False].sha256
    assert pq.read_table(tmp_path / "False.parquet").cast(table.schema).equals(table)


def _seeded_table(n: int, ordering: str) -> pa.Table:
    codes = np.zeros(MAX_BATCH, dtype=np.uint8)
    batches = seeded_batches(n, 10_000, seed=5, batch_rows=4_096)
    cols = concat_rows([rows_of(b, codes[: len(b)], seq) for seq, b in enumerate(batches, start=1)])
    order = account_order(cols[ordering], cols["timestamp_ns"])
    return pa.table({name: cols[name][order] for name in COLUMNS}, schema=arrow_schema())


@pytest.mark.parametrize("ordering", ["payer", "payee"])
def test_final_files_split_the_bytes_of_unsorted_columns_and_duckdb_reads_them(tmp_path: Path, ordering) -> None:
    table = _seeded_table(30_000, ordering)
    entry, rows = _write(tmp_path, "f.parquet", table, ordering)
    meta = pq.read_metadata(tmp_path / "f.parquet")
    encodings = {meta.schema.column(i).name: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}
    expected = column_encodings(ordering)
    assert expected[ordering] == "DELTA_BINARY_PACKED" and expected["amount_fen"] == "BYTE_STREAM_SPLIT"
    for name, encoding in expected.items():
        assert encoding in encodings[name], (name, encodings[name])
    assert rows == len(table) and entry.sha256 == digest(tmp_path / "f.parquet") and not entry.footer_sha256
    assert pq.read_table(tmp_path / "f.parquet").cast(table.schema).equals(table)
    con = duckdb.connect()
    try:  # DuckDB keeps a scan's rows in file order (preserve_insertion_order)
        back = con.execute(f"SELECT * FROM read_parquet('{tmp_path / 'f.parquet'}')").fetchnumpy()
    finally:
        con.close()
    for name in COLUMNS:
        assert np.array_equal(np.asarray(back[name]), table[name].to_numpy()), name


def test_an_intermediate_file_records_its_footer_and_a_changed_page_is_named(tmp_path: Path) -> None:
    """No whole-file digest for intermediate files: the footer's, and the pages' CRCs checked when
    read (deep check, ``check_pages``), so a changed page is still a CorruptSegment naming the file."""
    table = _seeded_table(30_000, "payer")
    entry, rows = _write(tmp_path, "i.parquet", table, segment_id=3, compression="none", whole_digest=False)
    path = tmp_path / "i.parquet"
    assert not entry.sha256 and entry.footer_sha256 == footer_digest(path) == footer_digest(path, entry.bytes)
    check_file(tmp_path, entry, trove_id="t", segment_id=3, rows=rows, deep=True)
    flip_a_data_byte(path)  # same size, same footer
    assert footer_digest(path) == entry.footer_sha256
    check_file(tmp_path, entry, trove_id="t", segment_id=3, rows=rows, deep=False)  # the footer cannot tell
    with pytest.raises(CorruptSegment, match=f"{path}.*page checksums"):
        check_pages(path)
    with pytest.raises(CorruptSegment, match=f"{path}.*page checksums"):
        check_file(tmp_path, entry, trove_id="t", segment_id=3, rows=rows, deep=True)
    path.write_bytes(b"not a parquet file")
    with pytest.raises(CorruptSegment, match=str(path)):
        footer_digest(path)
