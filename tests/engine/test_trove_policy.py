"""The compaction policy's layout (issue 17): a closed partition's leftover runs merge into one,
tiers whose ``fanin`` merge would make a run no merge takes merge as many as fit, a compactor
that lags leaves a layout as bounded as one that keeps up; and the writer's flush runs on a thread of
its own, so ingest goes on while a memtable is written. Metadata only, but the last test."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from engine.trove import compaction
from engine.trove.config import TroveConfig
from engine.trove.manifest import Manifest, Segment
from engine.trove.store import Trove
from tests.engine.test_trove import load, random_entries, reference_rows, small_config, table_rows

M = 1 << 26  # max_run_rows


def _manifest(config: TroveConfig, sizes: list[tuple[int, int]]) -> Manifest:
    m = Manifest(trove_id="t", partition_ns=config.partition_ns, partition_starts=sorted({p for p, _ in sizes}))
    for part, rows in sizes:
        m.segments.append(Segment(m.next_segment_id, "run", part, rows, 0, 0, [], []))
        m.next_segment_id += 1
    return m


def _merge_due(m: Manifest, config: TroveConfig, *, everything: bool = False) -> list[compaction.MergePlan]:
    """Apply ``plan_merge``'s merges to the metadata until none is left; the merges made."""
    done = []
    while step := compaction.plan_merge(m, config, everything=everything):
        ids = {s.id for s in step.sources}
        run = Segment(m.next_segment_id, "run", step.sources[0].partition, step.rows, 0, 0, [], [])
        m.next_segment_id += 1
        m.segments = [s for s in m.segments if s.id not in ids] + [run]
        done.append(step)
    return done


def _runs(m: Manifest) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for s in m.segments:
        out.setdefault(s.partition, []).append(s.rows)
    return {p: sorted(r) for p, r in out.items()}


def test_a_closed_partitions_leftovers_merge_into_one_final_run() -> None:
    config = TroveConfig()  # fanin 8, max_run_rows 2^26
    day = [M] * 3 + [1 << 23] * 7 + [1 << 20] * 4  # what tier merges leave from 2^20-row flushes
    m = _manifest(config, [(0, r) for r in day] + [(1, r) for r in day] + [(2, 1 << 20)] * 2)
    merges = _merge_due(m, config)
    leftover = 7 * (1 << 23) + 4 * (1 << 20)
    # Partition 0 and 1 are closed (2 is newer): 11 leftovers become one zstd run each; partition 2
    # (newest, and fewer than fanin runs anyway) is left alone.
    assert _runs(m) == {0: [leftover, M, M, M], 1: [leftover, M, M, M], 2: [1 << 20] * 2}
    assert [(len(s.sources), s.final) for s in merges] == [(11, True), (11, True)]
    # The final flush closes the newest too, but a partition of fewer than fanin runs stays as it is.
    assert _merge_due(m, config, everything=True) == []
    m = _manifest(config, [(0, r) for r in day])
    assert _merge_due(m, config) == []  # newest: its leftovers wait for more rows
    assert len(_merge_due(m, config, everything=True)) == 1 and _runs(m) == {0: [leftover, M, M, M]}


def test_runs_that_fanin_cannot_take_to_max_run_rows_merge_as_many_as_fit() -> None:
    config = TroveConfig()
    # 4M-row runs: 8 would make a 32M run, which no merge takes; 16 make one of max_run_rows.
    assert compaction.merge_width(4_000_000, config) == 16 and compaction.merge_width(1 << 20, config) == 8
    m = _manifest(config, [(0, 4_000_000)] * 15)
    assert _merge_due(m, config) == []
    m.segments.append(Segment(m.next_segment_id, "run", 0, 4_000_000, 0, 0, [], []))
    assert [len(s.sources) for s in _merge_due(m, config)] == [16] and _runs(m) == {0: [64_000_000]}
    # 19.4M-row runs (8 of 2.4M): before, never merged; now three at a time, once a third is there.
    m = _manifest(config, [(0, 19_400_000)] * 2)
    assert _merge_due(m, config) == []
    m.segments.append(Segment(m.next_segment_id, "run", 0, 19_400_000, 0, 0, [], []))
    merges = _merge_due(m, config)
    assert [(len(s.sources), s.final) for s in merges] == [(3, True)] and _runs(m) == {0: [58_200_000]}


def test_a_compactor_that_lags_leaves_a_layout_as_bounded_as_one_that_keeps_up(rng) -> None:
    """Merged late, runs group otherwise (the smallest of a longer tier merge first), so the runs
    may differ (seed 2191347858: [1715, 13949] kept up, [2318, 5951, 7395] merged only at the end);
    what holds however late: the same rows per partition, no run past ``max_run_rows``, and every
    closed partition left with fewer than ``fanin`` runs below ``max_run_rows`` (a lookup's files)."""
    config = TroveConfig(fanin=4, row_group_rows=16, max_run_rows=20_000)
    flushes = [(int(p), int(r)) for p, r in zip(np.repeat([0, 1, 2], 60), rng.integers(150, 400, 180), strict=True)]
    totals = {p: sum(r for q, r in flushes if q == p) for p in (0, 1, 2)}
    for every in (1, 7, len(flushes)):  # keeps up; merges every 7th flush; only at the end
        m = _manifest(config, [])
        for i, (part, rows) in enumerate(flushes, start=1):
            m.partition_starts = sorted({*m.partition_starts, part})
            m.segments.append(Segment(m.next_segment_id, "run", part, rows, 0, 0, [], []))
            m.next_segment_id += 1
            if i % every == 0:
                _merge_due(m, config)
        _merge_due(m, config, everything=True)
        layout = _runs(m)
        assert {p: sum(runs) for p, runs in layout.items()} == totals, every
        assert all(r <= config.max_run_rows for runs in layout.values() for r in runs), every
        assert all(sum(r < config.max_run_rows for r in runs) < config.fanin for runs in layout.values()), every


def test_the_writer_takes_batches_while_a_flush_is_written(tmp_path: Path, rng, monkeypatch) -> None:
    entries = list(random_entries(rng, 40))
    config = small_config(tmp_path / "t", partition_s=86_400, compact=False, flush_interval_s=600.0)
    trove = Trove.open(config)
    release = threading.Event()
    started = threading.Event()
    write = trove._write_segments

    def slow_write(pending, seen_seq):  # the first flush blocks until released
        started.set()
        release.wait(30)
        write(pending, seen_seq)

    def taken() -> None:
        while trove._rows_taken < trove._rows_in and not release.wait(0.005):
            pass

    monkeypatch.setattr(trove, "_write_segments", slow_write)
    try:
        n = 0
        while not started.is_set():  # one batch at a time, until a memtable (700 rows) is handed over
            trove.append(*entries[n][1:], entries[n][0])
            n += 1
            taken()
            started.wait(0.05 if trove._buffered_rows == 0 else 0)
        assert trove._buffered_rows == 0 and trove._flushing_rows > 0
        for seq, batch, codes in entries[n : n + 2]:  # fewer rows than a memtable: no wait for the flush
            trove.append(batch, codes, seq)
        taken()
        assert trove._rows_taken == trove._rows_in and trove._buffered_rows > 0  # taken meanwhile
        # None durable yet, and none lost from the count (rows that never reach the ledger excepted).
        assert trove.backlog_rows == len(reference_rows(entries[: n + 2])) and trove.manifest.rows == 0
        assert trove.counters["flush_wait_ns"] == 0
        release.set()
        load(trove, entries[n + 2 :])
        rows = sorted(r for s in trove.manifest.segments for r in table_rows_of(trove, s))
        assert rows == sorted(reference_rows(entries)) and trove.backlog_rows == 0
    finally:
        release.set()
        trove.close()


def table_rows_of(trove: Trove, s: Segment) -> list[tuple[int, ...]]:
    import pyarrow.parquet as pq

    return table_rows(pq.read_table(trove.root / s.file("payer").path))


def test_a_merge_waits_between_steps_while_a_memtable_is_flushed(tmp_path: Path) -> None:
    trove = Trove.open(small_config(tmp_path / "t", compact=False), start=False)
    try:
        assert trove._merge_gate() is False  # no flush: the merge goes on at once
        trove._flush_idle.clear()  # the flusher is writing a memtable
        answers: list[bool] = []
        merge = threading.Thread(target=lambda: answers.append(trove._merge_gate()))
        merge.start()
        merge.join(0.3)
        assert merge.is_alive() and not answers  # it waits for the flush...
        trove._flush_idle.set()
        merge.join(10)
        assert answers == [False] and trove.counters["compaction_yield_ns"] > 0  # ...then goes on
        trove._flush_idle.clear()
        trove._stop.set()  # closing: a waiting merge stops instead of waiting
        assert trove._merge_gate() is True
    finally:
        trove._flush_idle.set()
        trove.close()
