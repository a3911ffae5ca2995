"""The persistent trove: nothing lost, nothing invented, compaction, retention, integrity, CLI.

Small troves (thousands of rows, segments of a few hundred) so that every code path (several
segments, partitions, merges of two tiers) runs in well under a second per test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.codes import ResultCode
from engine.hooks.surveillance_log import SurveillanceLog, SurveillanceLogConfig
from engine.ledger import Ledger
from engine.records import make_batch
from engine.simtime import NS_PER_HOUR, iso_cst, parse_time
from engine.trove import retention
from engine.trove.config import TroveConfig
from engine.trove.files import digest
from engine.trove.manifest import FileEntry, load_manifest, save_manifest
from engine.trove.query import TroveReader
from engine.trove.schema import COLUMNS, extend_partitions
from engine.trove.store import Trove, TroveStopped
from loadgen.cli.main import main

START_NS = 1_795_305_600 * 10**9  # 2026-11-22 08:00 CST
ACCOUNTS = 60


def small_config(root: Path, **kw: object) -> TroveConfig:
    base = {
        "dir": str(root),
        "segment_rows": 700,
        "row_group_rows": 64,
        "fanin": 2,
        "reserve_free_bytes": 0,
        "partition_min_rows": 0,  # one partition per period, unless a test sets a floor
        "process_nice": 0,  # tests on a busy machine: the child is not starved
        # Runs of 2^26 rows would make the disk check ask for ~15 GiB of compaction scratch,
        # which a shared machine's disk may not have free; these tests' runs are far smaller.
        "max_run_rows": 1 << 20,
    }
    return TroveConfig(**{**base, **kw})  # type: ignore[arg-type]


def random_entries(
    rng: np.random.Generator, batches: int, *, hours: float = 3.0
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(batch_seq, batch, codes) with random accounts, cells, devices and codes over ``hours``."""
    step = int(hours * NS_PER_HOUR / (batches * 150))  # batches average 150 rows
    t = START_NS
    for seq in range(1, batches + 1):
        n = int(rng.integers(1, 300))
        payer = rng.integers(0, ACCOUNTS, n)
        batch = make_batch(
            payer,
            rng.integers(0, ACCOUNTS, n),  # payer == payee happens: SAME_ACCOUNT rows reach the trove too
            rng.integers(1, 10_000, n),
            transfer_id=np.arange(n) + seq * 1_000,
            timestamp_ns=t + np.arange(n) * step,
            location_cell=rng.integers(0, 20, n),
            # Mostly the payer's own two devices; one payment in five from someone else's.
            device_id=np.where(rng.random(n) < 0.2, rng.integers(0, ACCOUNTS, n), payer) * 2 + rng.integers(0, 2, n),
            category=rng.integers(0, 16, n),
        )
        t += n * step
        codes = rng.choice([0, 0, 0, int(ResultCode.INSUFFICIENT_FUNDS), int(ResultCode.OVERLOADED)], n).astype(
            np.uint8
        )
        yield seq, batch, codes


def reference_rows(entries: list[tuple[int, np.ndarray, np.ndarray]]) -> list[tuple[int, ...]]:
    """Every row that reached the ledger, as tuples in trove column order (the oracle)."""
    out = []
    for seq, batch, codes in entries:
        for i, (rec, code) in enumerate(zip(batch, codes.tolist(), strict=True)):
            if code == ResultCode.OVERLOADED:
                continue
            row = {"batch_seq": seq, "batch_index": i, "code": code}
            out.append(tuple(int(row[c]) if c in row else int(rec[c]) for c in COLUMNS))
    return out


def table_rows(table) -> list[tuple[int, ...]]:
    return list(zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True))


def load(trove: Trove, entries: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
    for seq, batch, codes in entries:
        trove.append(batch, codes, seq)
    trove.flush()


def expected_payments(ref: list[tuple[int, ...]], account: int, lo: int = -(2**63), hi: int = 2**63 - 1) -> list:
    payer, payee, ts = (list(COLUMNS).index(c) for c in ("payer", "payee", "timestamp_ns"))
    hits = [r for r in ref if account in (r[payer], r[payee]) and lo <= r[ts] < hi]
    return sorted(hits, key=lambda r: (r[ts], r[1], r[2]))


def flip_a_data_byte(path: Path) -> None:
    """One byte of a Parquet file's data pages changed: the same size, the footer intact (a flip
    between the leading magic and the footer whose length the last 8 bytes give), so only a digest
    of the whole file or the pages' CRCs can tell."""
    data = bytearray(path.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[(4 + footer_start) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_answers_as_the_reference(trove: Trove, entries: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
    """Every seventh account's payments, read from ``trove``, are those ``entries`` hold."""
    ref = reference_rows(entries)
    reader = TroveReader(trove=trove)
    try:
        for a in range(0, ACCOUNTS, 7):
            assert table_rows(reader.payments(a)) == expected_payments(ref, a)
    finally:
        reader.close()


@pytest.fixture
def entries(rng: np.random.Generator) -> list[tuple[int, np.ndarray, np.ndarray]]:
    return list(random_entries(rng, 40))


def test_a_persons_payments_read_only_the_row_groups_that_can_hold_them(tmp_path, rng, entries) -> None:
    """``payments`` reads through a per-file sparse index (the account's min/max per row group):
    in account-sorted files of many row groups it decodes a few of them, not the file, and the
    rows still equal the reference's."""
    trove = Trove.open(small_config(tmp_path / "t", partition_s=3600), start=True)
    ref = reference_rows(entries)
    try:
        load(trove, entries)
        trove.compact_all()
        reader = TroveReader(trove=trove)
        with trove.snapshot() as segments:
            paths = [str(trove.root / s.file("payer").path) for s in segments]
        read = total = 0
        for path in paths:
            total += pq.ParquetFile(path).metadata.num_rows
            rows = reader._lookup(path, "payer", np.array([7]))
            read += 0 if rows is None else rows.num_rows
        assert 0 < read < total / 4  # 60 accounts, 64-row groups sorted by payer
        assert table_rows(reader.payments(7)) == expected_payments(ref, 7)
        reader.close()
        one = TroveReader(trove=trove, lookup_threads=1)  # files one after another: the same rows
        for account in range(ACCOUNTS + 1):
            assert table_rows(one.payments(account)) == expected_payments(ref, account)
        one.close()
    finally:
        trove.close()


def test_nothing_lost_nothing_invented_before_and_after_compaction(tmp_path, rng, entries) -> None:
    trove = Trove.open(small_config(tmp_path / "t", partition_s=3600), start=True)
    ref = reference_rows(entries)
    try:
        load(trove, entries)
        st = trove.stats()
        # Every segment the writer writes is a sorted run (two orderings), none arrival-ordered.
        assert st["rows"] == len(ref) and st["runs"] >= st["partitions"] and st["ingest_segments"] == 0
        reader = TroveReader(trove=trove)
        accounts = rng.choice(ACCOUNTS, 8, replace=False).tolist()
        lo, hi = START_NS + NS_PER_HOUR // 2, START_NS + 2 * NS_PER_HOUR
        for phase in ("written", "merged"):
            for a in accounts:
                assert table_rows(reader.payments(a)) == expected_payments(ref, a), (phase, a)
                assert table_rows(reader.payments(a, lo, hi)) == expected_payments(ref, a, lo, hi), (phase, a)
            trove.compact_all()
        st = trove.stats()
        assert st["rows"] == st["compacted_rows"] == len(ref) and st["ingest_segments"] == 0 and st["merges"] > 0
        reader.close()
    finally:
        trove.close()


def test_the_flush_interval_holds_under_a_backlog(tmp_path, rng, monkeypatch) -> None:
    """A queue that never runs dry (a backlog, or a steady stream) still flushes every interval,
    not only every ``segment_rows`` rows: the writer is slowed so batches queue up behind it."""
    seen: list[tuple[int, int]] = []  # (segments written, batches still queued) as each batch is taken
    needed = Trove._rows_needed

    def slow(self: Trove, rows, seq: int):
        time.sleep(0.004)
        seen.append((self.counters["segments_written"], self._queue.qsize()))
        return needed(self, rows, seq)

    monkeypatch.setattr(Trove, "_rows_needed", slow)
    trove = Trove.open(
        small_config(tmp_path / "t", segment_rows=1 << 30, flush_interval_s=0.2, compact=False), start=True
    )
    try:
        for seq, batch, codes in random_entries(rng, 200):  # 0.8 s of the writer's time, queued at once
            trove.append(batch, codes, seq)
    finally:
        trove.close()
    assert len(seen) == 200
    assert any(written >= 1 and queued > 0 for written, queued in seen), "no flush while the backlog lasted"


def test_an_interval_flush_does_not_stop_ingest_while_it_is_written(tmp_path, rng, monkeypatch) -> None:
    """When the interval passes with the queue dry, the memtable goes to the flusher and the writer
    goes on taking batches while it is written (it used to wait for the write: a stall of the
    whole flush, which the ring passed on to the sequencer)."""
    release = threading.Event()
    write = Trove._write_segments

    def slow_write(self: Trove, pending, seen_seq: int) -> None:
        release.wait(30)
        write(self, pending, seen_seq)

    monkeypatch.setattr(Trove, "_write_segments", slow_write)
    trove = Trove.open(
        small_config(tmp_path / "t", segment_rows=1 << 30, flush_interval_s=0.05, compact=False), start=True
    )
    try:
        entries = list(random_entries(rng, 4))
        trove.append(*entries[0][1:], entries[0][0])
        deadline = time.monotonic() + 30
        while trove._flush_idle.is_set() and time.monotonic() < deadline:  # the interval flush starts
            time.sleep(0.01)
        assert not trove._flush_idle.is_set(), "no interval flush started"
        taken = trove._rows_taken
        for seq, batch, codes in entries[1:]:
            trove.append(batch, codes, seq)
        while trove._rows_taken == taken and time.monotonic() < deadline:
            time.sleep(0.01)
        # Taken while the first memtable is still being written.
        assert trove._rows_taken > taken and not trove._flush_idle.is_set()
    finally:
        release.set()
        trove.close()


def test_each_flush_counts_its_rows_and_cpu_the_first_apart(tmp_path, entries) -> None:
    """The flush counters the plan charges a window's trove by (issue 21): every row written by a
    finished flush, the flusher's CPU for them, the first flush's own figures kept apart."""
    trove = Trove.open(small_config(tmp_path / "t", partition_s=3600, compact=False), start=True)
    ref = reference_rows(entries)
    try:
        for seq, batch, codes in entries[:20]:
            trove.append(batch, codes, seq)
        trove.flush()
        first = dict(trove.stats())
        for seq, batch, codes in entries[20:]:
            trove.append(batch, codes, seq)
        trove.flush()
        st = trove.stats()
    finally:
        trove.close()
    assert st["rows_flushed"] == st["rows"] == len(ref)
    assert first["flushes"] >= 1 and st["flushes"] > first["flushes"]
    assert st["first_flush_rows"] == first["first_flush_rows"] > 0
    assert st["first_flush_cpu_ns"] == first["first_flush_cpu_ns"] > 0
    assert first["rows_flushed"] < st["rows_flushed"] and first["flush_cpu_ns"] < st["flush_cpu_ns"]
    assert st["flush_cpu_ns"] <= st["writer_cpu_ns"]  # the flusher's share of the writer's CPU


def test_compaction_keeps_the_multiset_of_rows_and_both_orderings(tmp_path, entries) -> None:
    trove = Trove.open(small_config(tmp_path / "t", partition_s=86_400), start=False)
    load_sync(trove, entries)
    trove.compact_all()
    runs = [s for s in trove.manifest.segments if s.kind == "run"]
    assert runs and all(s.kind == "run" for s in trove.manifest.segments)
    assert max(s.tier for s in runs) >= 1  # merged past the first tier
    for ordering in ("payer", "payee"):
        got = []
        for s in runs:
            t = pq.read_table(tmp_path / "t" / s.file(ordering).path)
            keys = list(zip(t.column(ordering).to_pylist(), t.column("timestamp_ns").to_pylist(), strict=True))
            assert keys == sorted(keys), f"{s.file(ordering).path} is not sorted by {ordering}"
            got += table_rows(t)
        assert sorted(got) == sorted(reference_rows(entries))
    trove.close()


def load_sync(trove: Trove, entries: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
    """Load without the writer thread: start it for the load, as ``open`` would."""
    trove._writer.start()
    load(trove, entries)


def test_retention_expires_the_oldest_partitions(tmp_path, entries) -> None:
    trove = Trove.open(small_config(tmp_path / "t", partition_s=3600, max_age_s=3600), start=False)
    load_sync(trove, entries)
    trove.compact_all()
    parts = sorted({s.partition for s in trove.manifest.segments})
    ref = reference_rows(entries)
    ts = list(COLUMNS).index("timestamp_ns")
    newest = max(r[ts] for r in ref)
    horizon = newest - 3600 * 10**9
    assert len(parts) <= 2 and trove.manifest.rows_expired > 0
    kept = trove.manifest.rows
    assert kept + trove.manifest.rows_expired == len(ref)
    # Whole partitions go: every kept row is in a partition that ends after the horizon.
    assert all(r[ts] >= horizon - 3600 * 10**9 for r in ref[-kept:])
    assert not [f for f in (tmp_path / "t").glob("*/p*/*.parquet") if int(f.parent.name[1:]) < parts[0]]
    trove.close()

    by_bytes = Trove.open(small_config(tmp_path / "b", partition_s=3600), start=False)
    load_sync(by_bytes, entries)
    by_bytes.compact_all()
    total = by_bytes.bytes_on_disk()
    by_bytes.close()
    capped = Trove.open(small_config(tmp_path / "c", partition_s=3600, max_bytes=total // 2), start=False)
    load_sync(capped, entries)
    capped.compact_all()
    assert capped.bytes_on_disk() <= total // 2 or len({s.partition for s in capped.manifest.segments}) == 1
    assert capped.manifest.rows_expired > 0 and capped.manifest.rows + capped.manifest.rows_expired == len(ref)
    capped.close()


def test_files_of_a_trove_digested_with_blake2b_are_still_checked(tmp_path, entries) -> None:
    """Troves written before the digest became SHA-256 recorded BLAKE2b: a deep check still verifies them."""
    root = tmp_path / "t"
    trove = Trove.open(small_config(root, partition_s=3600), start=False)
    load_sync(trove, entries)
    trove.close()
    manifest = load_manifest(root)
    assert manifest is not None and all(
        (f.sha256 or f.footer_sha256) and not f.blake2b for s in manifest.segments for f in s.files
    )
    manifest.segments = [
        msgspec.structs.replace(
            s, files=[FileEntry(f.path, f.ordering, f.bytes, blake2b=digest(root / f.path, "blake2b")) for f in s.files]
        )
        for s in manifest.segments
    ]
    save_manifest(root, manifest)
    intact = Trove.open(small_config(root, partition_s=3600), deep_check=True, start=False)
    intact.close()
    assert intact.problems == []
    victim = manifest.segments[0].files[0]
    data = bytearray((root / victim.path).read_bytes())
    data[len(data) // 3] ^= 0xFF
    (root / victim.path).write_bytes(bytes(data))
    damaged = Trove.open(small_config(root, partition_s=3600), deep_check=True, start=False)
    damaged.close()
    assert len(damaged.problems) == 1 and victim.path in damaged.problems[0] and "blake2b digest" in damaged.problems[0]


def test_a_corrupt_or_foreign_file_is_named_and_the_lost_rows_rebuilt_from_the_journal(tmp_path, entries) -> None:
    root = tmp_path / "t"
    trove = Trove.open(small_config(root, partition_s=3600), start=False)
    load_sync(trove, entries)
    trove.compact_all()
    full = trove.stats()["rows"]
    victim = trove.manifest.segments[0].files[1]  # a run's payee file
    trove.close()
    flip_a_data_byte(root / victim.path)  # only the digest (or the pages' CRCs) can tell
    foreign = root / "segments" / "p1" / "stray.parquet"
    foreign.parent.mkdir(parents=True)
    pq.write_table(pq.read_table(root / trove.manifest.segments[-1].files[0].path), foreign)

    reader = TroveReader.open(root, deep_check=True)
    # Named; a final file by its whole-file digest, an intermediate one by its pages' CRCs.
    assert any(victim.path in p and "its bytes changed" in p for p in reader.problems), reader.problems
    reader.close()
    reopened = Trove.open(small_config(root, partition_s=3600), deep_check=True)
    try:
        assert any(victim.path in p for p in reopened.problems)
        assert any("stray.parquet" in p and "not listed" in p for p in reopened.problems)
        assert reopened.stats()["rows"] < full and reopened.to_rebuild
        assert reopened.needs_journal_from() <= min(lo for _, rs in reopened.to_rebuild for lo, _ in rs)
        reopened.rebuild_from(entries)  # the whole journal: only the lost rows are written again
        assert reopened.stats()["rows"] == full and not reopened.to_rebuild
        reopened.compact_all()
        assert_answers_as_the_reference(reopened, entries)
    finally:
        reopened.close()


def test_rebuild_after_a_segment_file_is_deleted(tmp_path, entries) -> None:
    root = tmp_path / "t"
    trove = Trove.open(small_config(root, partition_s=3600, compact=False))
    load(trove, entries)
    full = trove.stats()["rows"]
    gone = trove.manifest.segments[1]
    trove.close()
    (root / gone.files[0].path).unlink()
    reopened = Trove.open(small_config(root, partition_s=3600, compact=False))
    try:
        assert any(gone.files[0].path in p and "missing" in p for p in reopened.problems)
        assert reopened.stats()["rows"] == full - gone.rows
        reopened.rebuild_from(entries)
        assert reopened.stats()["rows"] == full
        got = []
        for s in reopened.manifest.segments:
            got += table_rows(pq.read_table(root / s.files[0].path))
        assert sorted(got) == sorted(reference_rows(entries))
    finally:
        reopened.close()


def test_disk_checks_refuse_at_start_and_stop_ingest_loudly(tmp_path, monkeypatch, entries) -> None:
    with pytest.raises(ValueError, match="free but the trove needs"):
        Trove.open(small_config(tmp_path / "huge", max_bytes=1 << 62))
    trove = Trove.open(small_config(tmp_path / "t", reserve_free_bytes=1))

    class Full:
        free = 0

    monkeypatch.setattr("engine.trove.store.shutil.disk_usage", lambda _: Full)
    seq, batch, codes = entries[0]
    trove.append(batch, codes, seq)
    with pytest.raises(TroveStopped, match="stopped ingesting"):
        trove.flush()
    with pytest.raises(TroveStopped):
        trove.append(batch, codes, seq + 1)
    st = trove.stats()
    assert "below the trove's reserve" in st["failure"] and st["rows_not_persisted"] >= len(batch)
    trove.close()
    assert retention.scratch_bytes(TroveConfig(compact=False), 40) == 0


def test_the_hook_writes_every_ledger_payment_to_the_trove(tmp_path, rng) -> None:
    log = SurveillanceLog(SurveillanceLogConfig(trove=small_config(tmp_path / "t"), deferred=False))
    ledger = Ledger(ACCOUNTS, balance_fen=5_000, hooks=[log])
    seen = 0
    for _, batch, _ in random_entries(rng, 20):
        ledger.apply(batch)
        seen += len(batch)
    got = log.query(3)
    log.trove.flush()  # type: ignore[union-attr]
    assert log.stats()["rows"] == seen == ledger.stats.transfers
    assert len(got) and all(3 in (p, q) for p, q in zip(got["payer"], got["payee"], strict=True))
    log.close()
    assert ledger.hook_timing["surveillance_log"].background_ns > 0


def test_cli_query_and_stats_through_the_entry_point(tmp_path, entries, capsys) -> None:
    root = tmp_path / "t"
    trove = Trove.open(small_config(root, partition_s=3600))
    load(trove, entries)
    trove.compact_all()
    trove.close()
    ref = reference_rows(entries)

    assert main(["trove", "stats", str(root), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["rows"] == len(ref) == st["compacted_rows"] and st["bytes_on_disk"] > 0 and st["segments"] >= 1

    since, until = iso_cst(START_NS + NS_PER_HOUR), iso_cst(START_NS + 2 * NS_PER_HOUR)
    assert main(["trove", "query", str(root), "--account", "5", "--since", since, "--until", until, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = expected_payments(ref, 5, parse_time(since), parse_time(until))
    assert [r["transfer_id"] for r in out["rows"]] == [r[3] for r in want]
    assert all(r["time"].endswith("+08:00") for r in out["rows"])

    for args in (
        ["--counterparties", "5", "--hops", "2", "--top", "5"],
        ["--cell", "3"],
        ["--same-device", "5"],
        ["--aggregate", "region,category", "--by", "hour"],
    ):
        assert main(["trove", "query", str(root), *args, "--json"]) == 0, args
        assert json.loads(capsys.readouterr().out)["count"] > 0, args
    assert main(["trove", "query", str(tmp_path / "nothing"), "--account", "1"]) == 2
    assert "not a trove" in capsys.readouterr().err


def test_queries_answer_what_the_rows_say(tmp_path, entries) -> None:
    root = tmp_path / "t"
    trove = Trove.open(small_config(root, partition_s=3600))
    load(trove, entries)
    trove.compact_all()
    reader = TroveReader(trove=trove)
    ref = [dict(zip(COLUMNS, r, strict=True)) for r in reference_rows(entries)]
    try:
        cps = reader.counterparties(5, hops=1, top=1000).to_pylist()
        counts: dict[int, int] = {}
        for r in ref:
            if r["payer"] == 5 and r["payee"] != 5:
                counts[r["payee"]] = counts.get(r["payee"], 0) + 1
            elif r["payee"] == 5 and r["payer"] != 5:
                counts[r["payer"]] = counts.get(r["payer"], 0) + 1
        assert {c["account"]: c["payments"] for c in cps} == counts
        cell = {r["payer"] for r in ref if r["location_cell"] == 3}
        assert set(reader.co_location(3).column("account").to_pylist()) == cell
        devices = {r["device_id"] for r in ref if r["payer"] == 5}
        linked = {r["payer"] for r in ref if r["device_id"] in devices and r["payer"] != 5}
        assert set(reader.same_device(5).column("account").to_pylist()) == linked
        agg = reader.aggregate(["category"], "day").to_pylist()
        assert sum(a["payments"] for a in agg) == len(ref)
        assert sum(a["accepted"] for a in agg) == sum(r["code"] == 0 for r in ref)
    finally:
        reader.close()
        trove.close()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(msgspec.ValidationError, match="partition_s"):
        msgspec.convert({"partition_s": 7000}, TroveConfig)
    with pytest.raises(ValueError, match="mode"):
        SurveillanceLogConfig(mode="ring")
    for field, bad in (
        ("process_nice", 20),
        ("ring_slots", 0),
        ("partition_min_rows", -1),
        ("final_row_group_rows", -1),
    ):
        with pytest.raises(msgspec.ValidationError, match=field):
            msgspec.convert({field: bad}, TroveConfig)
    with pytest.raises(ValueError, match="must divide trove"):
        TroveConfig(row_group_rows=16_384, final_row_group_rows=3_000)
    assert TroveConfig(row_group_rows=64, final_row_group_rows=4_096).file_row_group_rows(final=True) == 64


def test_the_trove_is_plain_parquet_that_pyarrow_dataset_reads_too(tmp_path, entries) -> None:
    """Beyond DuckDB: the files the manifest lists are ordinary Parquet (issue 17, item 6)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    root = tmp_path / "t"
    trove = Trove.open(small_config(root))
    load(trove, entries)
    trove.compact_all()
    paths = [str(root / s.file("payer").path) for s in trove.manifest.segments]
    sent = ds.dataset(paths, format="parquet").to_table(filter=pc.field("payer") == 5)
    reader = TroveReader(trove=trove)
    try:
        duck = reader.payments(5).filter(pc.field("direction") == "sent")
        assert sorted(table_rows(sent)) == sorted(table_rows(duck)) and sent.num_rows > 0
    finally:
        reader.close()
        trove.close()


def test_a_replayed_journal_fed_to_the_hook_adds_only_what_the_trove_lacks(tmp_path, entries) -> None:
    """Recovery's path: the server gives each batch's journal number; replaying entries the trove
    already holds writes nothing twice, and the ones past its durable point are written."""
    cfg = SurveillanceLogConfig(trove=small_config(tmp_path / "t"), deferred=False)
    half = len(entries) // 2

    def feed(log: SurveillanceLog, part: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        for seq, batch, codes in part:
            log.note_journal_seq(seq)
            log.observe(batch, codes)

    first = SurveillanceLog(cfg)
    first.attach(Ledger(ACCOUNTS))
    feed(first, entries[:half])
    first.close()
    assert first.stats()["durable_through_seq"] == entries[half - 1][0]

    second = SurveillanceLog(cfg)
    second.attach(Ledger(ACCOUNTS))
    feed(second, entries)  # the whole journal, as a restart replays it
    second.trove.flush()  # type: ignore[union-attr]
    st = second.stats()
    assert st["rows"] == len(reference_rows(entries)) and st["rows_skipped_durable"] == len(
        reference_rows(entries[:half])
    )
    got = []
    # Under a snapshot: the compactor may merge and delete segment files meanwhile.
    with second.trove.snapshot() as segments:  # type: ignore[union-attr]
        for s in segments:
            got += table_rows(pq.read_table(tmp_path / "t" / s.files[0].path))
    assert sorted(got) == sorted(reference_rows(entries))
    second.close()


def test_the_row_floor_joins_small_periods_into_partitions(tmp_path, entries) -> None:
    assert extend_partitions([], np.array([5, 5, 6, 7]), 0, 0) == [5, 6, 7]  # no floor: a period each
    assert extend_partitions([5], np.array([5, 6, 6, 8, 9]), 1, 3) == [5, 8]  # 5..7 reach 3 rows, 8 starts
    assert extend_partitions([5, 8], np.array([3]), 0, 3) == [3, 5, 8]  # rows before the first partition
    root = tmp_path / "t"
    floor = 1_500
    trove = Trove.open(small_config(root, partition_s=600, partition_min_rows=floor), start=False)
    ref = reference_rows(entries)
    try:
        load_sync(trove, entries)
        trove.compact_all()
        m = trove.manifest
        rows_by_part: dict[int, int] = {}
        for s in m.segments:
            rows_by_part[s.partition] = rows_by_part.get(s.partition, 0) + s.rows
        periods = {r[0] // (600 * 10**9) for r in ref}
        assert 1 < len(rows_by_part) < len(periods) and sorted(rows_by_part) == m.partition_starts
        assert all(rows >= floor for p, rows in rows_by_part.items() if p != max(rows_by_part))
        got = []
        for s in m.segments:
            got += table_rows(pq.read_table(root / s.file("payer").path))
        assert sorted(got) == sorted(ref)
        # Time windows still select by time, whatever the partitions.
        lo, hi = START_NS + NS_PER_HOUR // 2, START_NS + 2 * NS_PER_HOUR
        reader = TroveReader(trove=trove)
        try:
            assert table_rows(reader.payments(7, lo, hi)) == expected_payments(ref, 7, lo, hi)
        finally:
            reader.close()
    finally:
        trove.close()
    # A format 1 manifest (one partition per period) is read and upgraded.
    raw = json.loads((root / "trove.json").read_text())
    raw["format"] = 1
    del raw["partition_starts"]
    (root / "trove.json").write_text(json.dumps(raw))
    manifest = load_manifest(root)
    assert manifest is not None and manifest.format == 2 and manifest.partition_starts == sorted(rows_by_part)


def test_a_directory_reader_survives_a_merge_deleting_its_files(tmp_path, rng, entries) -> None:
    """A reader in another process holds no snapshot: a query whose files a merge deleted reloads
    the committed manifest and returns the same rows (before, DuckDB raised on the missing file)."""
    trove = Trove.open(small_config(tmp_path / "t", partition_s=86_400), start=False)
    ref = reference_rows(entries)
    try:
        load_sync(trove, entries)
        reader = TroveReader.open(tmp_path / "t")
        before = {s.id for s in reader._segments}
        trove.compact_all()
        gone = [s for s in reader._segments if not (tmp_path / "t" / s.file("payer").path).exists()]
        assert gone, "the merge deleted none of the files the reader had: the test would prove nothing"
        for a in rng.choice(ACCOUNTS, 4, replace=False).tolist():
            assert table_rows(reader.payments(a)) == expected_payments(ref, a)
        assert {s.id for s in reader._segments} != before  # it reloaded the manifest
        assert reader.same_device(int(entries[0][1]["payer"][0])).num_rows >= 1
        reader.close()
    finally:
        trove.close()
