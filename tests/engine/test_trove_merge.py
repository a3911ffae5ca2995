"""The trove's merges (issue 17): the streaming k-way merge of runs, the codecs of intermediate and
last-tier files, merges of arrival-ordered segments left by older versions, a merge stopped by
close, and a directory reader that refreshes its manifest."""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.simtime import NS_PER_HOUR
from engine.trove import compaction, files
from engine.trove.files import digest, write_parquet
from engine.trove.manifest import Segment, load_manifest
from engine.trove.query import TroveReader
from engine.trove.schema import COLUMNS, arrow_schema, concat_rows, partition_of, rows_of
from engine.trove.store import Trove
from tests.engine.test_trove import (
    START_NS,
    assert_answers_as_the_reference,
    expected_payments,
    flip_a_data_byte,
    load,
    load_sync,
    random_entries,
    reference_rows,
    small_config,
    table_rows,
)

_KEY = {
    o: [list(COLUMNS).index(c) for c in (o, "timestamp_ns", "batch_seq", "batch_index")] for o in ("payer", "payee")
}


def _oracle(ref: list[tuple[int, ...]], ordering: str) -> list[tuple[int, ...]]:
    """Rows by (account, time, batch_seq, batch_index), in plain Python."""
    return sorted(ref, key=lambda r: tuple(r[i] for i in _KEY[ordering]))


def _shuffled_times(entries, rng: np.random.Generator):
    """The same batches with times drawn at random over three hours: runs overlap in time, and
    times go back and forth in arrival order (the merge's checked path)."""
    for seq, batch, codes in entries:
        b = batch.copy()
        b["timestamp_ns"] = START_NS + rng.integers(0, 3 * NS_PER_HOUR, len(b))
        yield seq, b, codes


@pytest.mark.parametrize("times", ["monotone", "shuffled"])
def test_merging_runs_gives_both_orderings_every_row_once(tmp_path: Path, rng, monkeypatch, times: str) -> None:
    # Read-ahead of 7 rows: one account's rows span many reads of every source (the step that
    # takes nothing and reads further), and a step holds a handful of accounts.
    monkeypatch.setattr(compaction, "MERGE_READ_ROWS", 7)
    entries = list(random_entries(rng, 30))
    if times == "shuffled":
        entries = list(_shuffled_times(entries, rng))
    trove = Trove.open(small_config(tmp_path / "t", partition_s=86_400, compact=False), start=False)
    try:
        load_sync(trove, entries)
        runs = [s for s in trove.manifest.segments if s.kind == "run"]
        assert len(runs) >= 4
        assert compaction._disjoint(compaction._time_ordered(runs)) == (times == "monotone")
        merged = compaction.merge(
            trove.root, runs, 999, trove.manifest.trove_id, trove.config, duckdb_connection=_no_duckdb
        )
        ref = reference_rows(entries)
        assert merged.rows == len(ref)
        for ordering in ("payer", "payee"):
            f = pq.ParquetFile(trove.root / merged.file(ordering).path)
            assert table_rows(f.read()) == _oracle(ref, ordering), ordering
            # Whole row groups however the merge's steps were cut (the last one excepted).
            sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
            assert all(n == trove.config.row_group_rows for n in sizes[:-1])
    finally:
        trove.close()


def test_regrouped_cuts_whole_row_groups_from_chunks_of_any_size(rng) -> None:
    # Chunks smaller than a group, exactly one, and spanning several, with carries between them.
    sizes = [3, 10, 1, 0, 25, 7, 7, 40, 2, 9]
    total = sum(sizes)
    cols = {name: rng.integers(0, 200, total).astype(dtype) for name, dtype in COLUMNS.items()}
    bounds = np.cumsum([0, *sizes])
    chunks = [{name: col[lo:hi] for name, col in cols.items()} for lo, hi in itertools.pairwise(bounds)]
    batches = list(compaction._regrouped(iter(chunks), 10))
    assert all(b.num_rows % 10 == 0 for b in batches[:-1])
    assert sum(b.num_rows for b in batches) == total
    table = pa.Table.from_batches(batches)
    for name, col in cols.items():
        np.testing.assert_array_equal(table.column(name).to_numpy(), col)


def _no_duckdb():
    raise AssertionError("runs are merged without DuckDB")


def _codec(root: Path, seg: Segment) -> set[str]:
    """The codecs of the columns the files compress (``files.column_compression``: not every column)."""
    out = set()
    for f in seg.files:
        compressed = {n for n, codec in files.column_compression("zstd", f.ordering).items() if codec != "none"}
        meta = pq.read_metadata(root / f.path)
        for c in range(meta.num_columns):
            column = meta.row_group(0).column(c)
            if column.path_in_schema in compressed:
                out.add(column.compression)
            else:
                assert column.compression == "UNCOMPRESSED", column.path_in_schema
    return out


def test_files_a_merge_reads_again_are_lz4_the_rest_zstd(tmp_path: Path, rng) -> None:
    entries = list(random_entries(rng, 120))
    # segment_rows 700, fanin 2: runs of 2,800 rows or more are in the last tier.
    config = small_config(tmp_path / "t", partition_s=86_400, max_run_rows=2_800, intermediate_compression="lz4")
    trove = Trove.open(config, start=False)
    try:
        load_sync(trove, entries)
        trove.compact_all()
        segs = trove.manifest.segments
        assert sorted(r for s in segs for r in table_rows(pq.read_table(trove.root / s.files[0].path))) == sorted(
            reference_rows(entries)
        )
        last = [s for s in segs if compaction.is_last_tier(s.rows, config)]
        assert last and all(_codec(trove.root, s) == {"ZSTD"} for s in last)
        assert trove.counters["merges"] > 0
    finally:
        trove.close()
    # What a merge wrote below the last tier (and the writer past a partition's first segment) is lz4.
    partial = Trove.open(
        small_config(tmp_path / "p", partition_s=86_400, compact=False, intermediate_compression="lz4"), start=False
    )
    try:
        load_sync(partial, entries)
        runs = sorted(partial.manifest.segments, key=lambda s: s.id)
        assert _codec(partial.root, runs[0]) == {"ZSTD"} and _codec(partial.root, runs[-1]) == {"LZ4"}
        two = compaction.merge(
            partial.root, runs[:2], 998, partial.manifest.trove_id, partial.config, duckdb_connection=_no_duckdb
        )
        assert not compaction.is_last_tier(two.rows, partial.config) and _codec(partial.root, two) == {"LZ4"}
    finally:
        partial.close()


@pytest.mark.parametrize("intermediate", ["none", "lz4"])
def test_each_file_records_its_codec_and_the_digest_of_its_bytes(tmp_path: Path, rng, intermediate: str) -> None:
    """The digest is taken as the file is written (not read back): it must be the digest of the
    bytes on disk, for the writer's runs and for merged ones, in either codec. Final (zstd) files
    record the whole file's SHA-256; intermediate ones their footer's (their pages carry CRCs)."""
    entries = list(random_entries(rng, 120))
    config = small_config(tmp_path / "t", partition_s=86_400, max_run_rows=2_800, intermediate_compression=intermediate)
    trove = Trove.open(config, start=False)
    try:
        load_sync(trove, entries)
        written = list(trove.manifest.segments)
        assert {f.codec for s in written for f in s.files} == {"zstd", intermediate}  # first runs final
        _check_files(trove.root, written)
        trove.compact_all()
        _check_files(trove.root, trove.manifest.segments)
        assert trove.counters["merges"] > 0
    finally:
        trove.close()


def _check_files(root: Path, segments: list[Segment]) -> None:
    for s in segments:
        for f in s.files:
            if f.codec == "zstd":
                assert f.sha256 == digest(root / f.path) and not f.footer_sha256
            else:
                assert f.footer_sha256 == files.footer_digest(root / f.path) and not f.sha256
            assert f.bytes == (root / f.path).stat().st_size
            parquet_codec = "UNCOMPRESSED" if f.codec == "none" else f.codec.upper()
            assert _codec(root, Segment(s.id, s.kind, s.partition, s.rows, 0, 0, [], [f])) == {parquet_codec}


def _add_arrival_segments(trove: Trove, entries, per_segment: int) -> None:
    """Arrival-ordered "ingest" segments, as versions before this one wrote (one file each)."""
    m = trove.manifest
    schema = arrow_schema()
    part = int(partition_of(np.array([START_NS]), m.partition_ns)[0])  # the three hours fall in one day
    for i in range(0, len(entries), per_segment):
        chunk = entries[i : i + per_segment]
        cols = concat_rows([rows_of(b, c, seq) for seq, b, c in chunk])
        table = pa.Table.from_arrays([pa.array(cols[n]) for n in schema.names], schema=schema)
        seg_id = m.next_segment_id
        m.next_segment_id += 1
        entry, n = write_parquet(
            trove.root,
            f"segments/p{part}/s{seg_id:08d}.parquet",
            "arrival",
            table.to_batches(),
            schema,
            trove_id=m.trove_id,
            segment_id=seg_id,
            row_group_rows=1_000,
        )
        ts = cols["timestamp_ns"]
        m.segments.append(
            Segment(seg_id, "ingest", part, n, int(ts.min()), int(ts.max()), [(chunk[0][0], chunk[-1][0])], [entry])
        )
    m.partition_starts = [part]
    m.durable_through_seq = entries[-1][0]


@pytest.mark.parametrize("sorter", ["numpy", "duckdb"])
def test_arrival_segments_of_older_troves_are_still_merged(tmp_path: Path, rng, monkeypatch, sorter: str) -> None:
    if sorter == "duckdb":  # too large for an in-memory sort: DuckDB sorts it, out of core
        monkeypatch.setattr(compaction, "_SORT_BYTES_PER_ROW", 1 << 40)
    entries = list(random_entries(rng, 24))
    trove = Trove.open(small_config(tmp_path / "t", partition_s=86_400, compact=True), start=False)
    try:
        _add_arrival_segments(trove, entries, per_segment=5)
        trove.compact_all()
        ref = reference_rows(entries)
        assert trove.stats()["ingest_segments"] == 0 and trove.stats()["rows"] == len(ref)
        for ordering in ("payer", "payee"):
            got = [
                r
                for s in trove.manifest.segments
                for r in table_rows(pq.read_table(trove.root / s.file(ordering).path))
            ]
            assert sorted(got) == sorted(ref)
            for s in trove.manifest.segments:
                rows = table_rows(pq.read_table(trove.root / s.file(ordering).path))
                assert rows == _oracle(rows, ordering)
    finally:
        trove.close()


def test_close_stops_a_merge_between_steps_and_leaves_its_sources(tmp_path: Path, rng, monkeypatch) -> None:
    monkeypatch.setattr(compaction, "MERGE_READ_ROWS", 16)
    entries = list(random_entries(rng, 30))
    trove = Trove.open(small_config(tmp_path / "t", partition_s=86_400, compact=False), start=False)
    try:
        load_sync(trove, entries)
        runs = list(trove.manifest.segments)
        calls = iter(range(10**6))
        with pytest.raises(compaction.MergeStopped):
            compaction.merge(
                trove.root,
                runs,
                997,
                trove.manifest.trove_id,
                trove.config,
                duckdb_connection=_no_duckdb,
                stopping=lambda: next(calls) >= 5,  # stops at the sixth step
            )
        assert not list(trove.root.glob("runs/*/r00000997*"))  # no partial file, not even a .tmp
        assert all((trove.root / f.path).exists() for s in runs for f in s.files)
    finally:
        trove.close()


def test_a_refreshed_directory_reader_sees_what_was_written_since(tmp_path: Path, rng) -> None:
    entries = list(random_entries(rng, 40))
    root = tmp_path / "t"
    trove = Trove.open(small_config(root, partition_s=3600, compact=False))
    try:
        for seq, batch, codes in entries[:20]:
            trove.append(batch, codes, seq)
        trove.flush()
        reader = TroveReader.open(root)
        first, ref = reference_rows(entries[:20]), reference_rows(entries)
        for seq, batch, codes in entries[20:]:
            trove.append(batch, codes, seq)
        trove.flush()
        accounts = range(0, 60, 11)
        assert all(table_rows(reader.payments(a)) == expected_payments(first, a) for a in accounts)  # its snapshot
        reader.refresh()
        assert all(table_rows(reader.payments(a)) == expected_payments(ref, a) for a in accounts)
        trove.compact_all()  # merges delete every file the reader lists: it re-runs on the new manifest
        assert all(table_rows(reader.payments(a)) == expected_payments(ref, a) for a in accounts)
        assert reader._checked >= {(s.id, f.path) for s in trove.manifest.segments for f in s.files}
        reader.close()
    finally:
        trove.close()


def test_the_under_load_benchmark_dates_its_history_before_the_run(tmp_path: Path) -> None:
    from benchmarks.trove_under_load import history_window, preload
    from engine.clock import CLOCK_START_NS
    from engine.simtime import NS_PER_DAY

    root = tmp_path / "t"
    preload(root, 20_000, 5_000, seed=3)  # four simulated days of history
    manifest = load_manifest(root)
    assert manifest is not None and manifest.rows == 20_000
    first = min(s.min_timestamp_ns for s in manifest.segments)
    last = max(s.max_timestamp_ns for s in manifest.segments)
    # The history ends where the run's clock starts: its payments come after it, never among it.
    assert first >= CLOCK_START_NS - 4 * NS_PER_DAY and last < CLOCK_START_NS
    day_start_ns, accounts = history_window(root)
    assert day_start_ns == last + 1 - NS_PER_DAY
    assert 4_900 < accounts <= 5_000  # the payers seen, from the files' statistics
    from engine.trove.bench import probe_live

    probed = probe_live(
        str(root), seconds=0.2, accounts=accounts, seed=1, day_start_ns=day_start_ns, kinds=("payments_day",)
    )
    assert list(probed) == ["payments_day"] and probed["payments_day"]["queries"] >= 1
    assert probed["payments_day"]["mean_rows"] > 0  # the history's last day holds the subjects' payments
    with pytest.raises(ValueError, match="query kinds are"):
        probe_live(str(root), seconds=0.1, accounts=accounts, seed=1, kinds=("payments_week",))


@pytest.mark.parametrize("segment_rows", [25_000, 300_000, 1 << 20])
def test_the_policy_merges_a_row_once_per_tier_whatever_the_segment_size(segment_rows: int) -> None:
    from benchmarks.trove_merge_cost import simulate_policy
    from engine.trove.config import TroveConfig

    config = TroveConfig(fanin=8)  # segment_rows 2^20: the writer's time flushes make smaller ones
    tiers = compaction.tier_of(config.max_run_rows, config) - compaction.tier_of(segment_rows, config)
    got = simulate_policy(config, segment_rows, 1 << 27)
    # At most one merge per tier between a segment and the largest run (24 for 25k-row segments before).
    assert 1 <= got["merges_per_row"] <= tiers
    assert got["runs_at_end"] <= (config.fanin - 1) * (tiers + 1) + (1 << 27) / config.max_run_rows


def test_merge_debt_follows_the_merges_a_merge_makes_due() -> None:
    """Compaction's backlog counts the cascade: 8 tier-1 runs merge into a tier-2 run, which makes
    8 tier-2 runs, which merge into the last tier; runs of another partition below fanin add nothing."""
    from engine.trove.config import TroveConfig
    from engine.trove.manifest import Manifest

    config = TroveConfig(fanin=8)
    small, big = 1 << 19, 1 << 22
    assert compaction.tier_of(small, config) + 1 == compaction.tier_of(big, config)
    sizes = [(0, big)] * 7 + [(0, small)] * 8 + [(1, small)] * 7
    manifest = Manifest(trove_id="t", partition_ns=config.partition_ns, partition_starts=[0, 1])
    manifest.segments = [Segment(i + 1, "run", part, rows, 0, 0, [], []) for i, (part, rows) in enumerate(sizes)]
    assert compaction.merge_debt(manifest, config) == (8 * small + 8 * big, 2)
    assert len(manifest.segments) == len(sizes)  # the manifest itself is left alone
    assert compaction.merge_debt(manifest, TroveConfig(fanin=8, compact=False)) == (0, 0)


def test_files_store_required_columns_with_statistics_and_codecs_where_they_pay(tmp_path: Path, rng) -> None:
    """Every column required (no definition levels), min/max statistics on the time and the
    accounts only, delta encoding on a file's own account (not the other), and the dictionary
    columns and the file's own account outside zstd: what ``files.write_parquet`` promises, in
    both orderings."""
    trove = Trove.open(small_config(tmp_path / "t", partition_s=86_400, compact=False), start=False)
    try:
        load_sync(trove, list(random_entries(rng, 30)))
        run = trove.manifest.segments[0]  # the partition's first run: zstd
        for ordering in ("payer", "payee"):
            meta = pq.read_metadata(trove.root / run.file(ordering).path)
            assert all(not field.nullable for field in meta.schema.to_arrow_schema())
            group = meta.row_group(0)
            by_name = {group.column(c).path_in_schema: group.column(c) for c in range(meta.num_columns)}
            with_stats = {n for n, c in by_name.items() if c.is_stats_set and c.statistics.has_min_max}
            assert with_stats == {"timestamp_ns", "payer", "payee"}
            other = "payee" if ordering == "payer" else "payer"
            assert "DELTA_BINARY_PACKED" in by_name[ordering].encodings
            assert "DELTA_BINARY_PACKED" not in by_name[other].encodings
            uncompressed = {n for n, c in by_name.items() if c.compression == "UNCOMPRESSED"}
            assert uncompressed == {"category", "operator", "code", ordering}
            assert by_name[other].compression == by_name["amount_fen"].compression == "ZSTD"
    finally:
        trove.close()


def test_a_persons_payments_span_files_with_nullable_and_required_columns(tmp_path: Path, rng, monkeypatch) -> None:
    """Files written before the columns were required (nullable: older troves) and after live side
    by side: a lookup's tables from both concatenate, and a merge of both writes required columns."""
    entries = list(random_entries(rng, 30))
    half = len(entries) // 2
    trove = Trove.open(small_config(tmp_path / "t", partition_s=86_400, compact=False), start=False)
    try:
        with monkeypatch.context() as m:
            m.setattr(files, "file_schema", lambda schema: schema)  # as older versions wrote them
            load_sync(trove, entries[:half])  # flushed before it returns
        load(trove, entries[half:])
        segs = trove.manifest.segments
        nullable = [pq.read_schema(trove.root / s.files[0].path).field("payer").nullable for s in segs]
        assert True in nullable and False in nullable
        ref = reference_rows(entries)
        reader = TroveReader(trove=trove)
        for account in range(0, 60, 7):
            assert table_rows(reader.payments(account)) == expected_payments(ref, account)
        reader.close()
        merged = compaction.merge(
            trove.root, segs, 999, trove.manifest.trove_id, trove.config, duckdb_connection=_no_duckdb
        )
        assert not pq.read_schema(trove.root / merged.files[0].path).field("payer").nullable
        assert sorted(table_rows(pq.read_table(trove.root / merged.files[0].path))) == sorted(ref)
    finally:
        trove.close()


@pytest.mark.parametrize("damage", ["page", "foreign"])
def test_a_damaged_or_foreign_intermediate_file_is_named_not_merged(tmp_path: Path, rng, damage: str) -> None:
    """Intermediate files have no whole-file digest: a merge checks their size, footer digest, trove
    and segment, and every page's CRC as it reads them; a deep check does the same. A changed page
    or another run's file in its place is a CorruptSegment naming the file, never merged."""
    entries = list(random_entries(rng, 120))
    config = small_config(tmp_path / "t", partition_s=86_400, compact=False, intermediate_compression="none")
    trove = Trove.open(config, start=False)
    try:
        load_sync(trove, entries)
        runs = [s for s in sorted(trove.manifest.segments, key=lambda s: s.id) if s.file("payee").codec == "none"]
        assert len(runs) >= 3 and all(s.file("payee").footer_sha256 and not s.file("payee").sha256 for s in runs)
        victim = trove.root / runs[1].file("payee").path
        if damage == "page":
            flip_a_data_byte(victim)
        else:  # another run's payee file, renamed into its place
            victim.write_bytes((trove.root / runs[2].file("payee").path).read_bytes())
        with pytest.raises(files.CorruptSegment, match=str(victim)):
            compaction.merge(
                trove.root, runs[:2], 998, trove.manifest.trove_id, trove.config, duckdb_connection=_no_duckdb
            )
        assert not list((trove.root / "runs").rglob("r00000998.*"))  # nothing of the merge was kept
    finally:
        trove.close()
    reopened = Trove.open(config, deep_check=True, start=False)
    reopened.close()
    assert len(reopened.problems) == 1 and str(victim) in reopened.problems[0]


def test_a_damaged_run_found_by_a_live_merge_is_set_aside_and_rebuilt_at_the_next_open(tmp_path: Path, rng) -> None:
    """A merge that meets a damaged source while the trove runs takes that source out (named,
    its files renamed ``*.damaged``, its batch ranges committed as rows to rebuild: the watermark
    falls below them), and compaction and ingest go on; the next open rebuilds its rows from the
    journal, and every query then answers as the reference does."""
    entries = list(random_entries(rng, 120))
    config = small_config(tmp_path / "t", partition_s=86_400, compact=False, intermediate_compression="none")
    trove = Trove.open(config, start=False)
    load_sync(trove, entries)
    runs = [s for s in sorted(trove.manifest.segments, key=lambda s: s.id) if s.file("payee").codec == "none"]
    assert len(runs) >= 3
    victim_segment = runs[1]
    victim = trove.root / victim_segment.file("payee").path
    flip_a_data_byte(victim)
    durable_before, rows_before = trove.durable_seq(), trove.stats()["rows"]
    trove.config = msgspec.structs.replace(trove.config, compact=True)
    with trove.snapshot():  # a query reading meanwhile: the damaged files keep their names until it ends
        trove.compact_all()  # before: the CorruptSegment stopped compaction (and, in the thread, ingest)
        assert victim.exists() and trove.stats()["segments_set_aside"] == 1
    stats = trove.stats()
    assert stats["segments_set_aside"] == 1 and stats["rows_set_aside"] == victim_segment.rows
    assert not trove.failure and stats["merges"] >= 1
    assert any(str(victim) in p and "set aside" in p for p in trove.problems), trove.problems
    assert victim_segment.id not in {s.id for s in trove.manifest.segments}
    assert not victim.exists() and victim.with_name(victim.name + ".damaged").exists()
    first_lost = min(lo for lo, _ in victim_segment.seq_ranges)
    assert trove.durable_seq() == first_lost - 1 < durable_before
    assert stats["rows"] == rows_before - victim_segment.rows
    more = list(random_entries(rng, 10))
    more = [(seq + len(entries), batch, codes) for seq, batch, codes in more]
    load(trove, more)  # ingest goes on, and a flush keeps the set-aside ranges committed
    assert load_manifest(trove.root).to_rebuild and trove.durable_seq() == first_lost - 1
    trove.close()

    reopened = Trove.open(config, start=False)
    try:
        assert reopened.to_rebuild and reopened.needs_journal_from() == first_lost
        load_sync(reopened, entries + more)  # the whole journal: only the lost rows are written again
        assert not reopened.to_rebuild
        assert reopened.durable_seq() == len(entries) + len(more)
        assert_answers_as_the_reference(reopened, entries + more)
    finally:
        reopened.close()


def test_a_changed_footer_of_an_intermediate_file_is_named_by_the_cheap_check(tmp_path: Path, rng) -> None:
    """An intermediate run has no whole-file digest; its footer's is compared on every check (a
    query's open, a merge, the trove's open), not only a deep one: a footer changed in a way that
    still parses (a statistic's byte) is named, and the run is never read."""
    entries = list(random_entries(rng, 60))
    config = small_config(tmp_path / "t", partition_s=86_400, compact=False, intermediate_compression="none")
    trove = Trove.open(config, start=False)
    load_sync(trove, entries)
    run = next(s for s in trove.manifest.segments if s.file("payee").footer_sha256)
    victim = trove.root / run.file("payee").path
    trove.close()
    data = bytearray(victim.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    before = pq.read_metadata(victim)
    for pos in range(len(data) - 9, len(data) - 8 - footer_len, -1):  # a flip that still parses alike
        data[pos] ^= 0x01
        victim.write_bytes(bytes(data))
        try:
            meta = pq.read_metadata(victim)
            if meta.num_rows == before.num_rows and meta.metadata == before.metadata:
                break
        except Exception:
            pass
        data[pos] ^= 0x01
    else:
        pytest.fail("no byte of this footer changes it and still parses alike")
    reader = TroveReader.open(trove.root, deep_check=False)
    try:
        assert any(str(victim) in p and "footer digest" in p for p in reader.problems), reader.problems
    finally:
        reader.close()
