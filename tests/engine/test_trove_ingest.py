"""The trove's ingest path (issue 17): the writer's sort order, steady-state compaction, the
child's scheduling figures, the merge's spill directory, and the benchmark's modes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.trove import compaction
from engine.trove.bench import run_bench
from engine.trove.process import TroveProcess, process_runqueue_wait_ns
from engine.trove.schema import account_order
from engine.trove.store import Trove
from tests.engine.test_trove import load_sync, random_entries, reference_rows, small_config, table_rows


def _composite_order(account: np.ndarray, ts: np.ndarray) -> list[int]:
    """The oracle: rows by (account, time, arrival position), in plain Python."""
    return sorted(range(len(account)), key=lambda i: (int(account[i]), int(ts[i]), i))


@pytest.mark.parametrize("monotone", [True, False])
def test_account_order_is_account_then_time_then_arrival(rng: np.random.Generator, monotone: bool) -> None:
    n = 5_000
    account = rng.integers(0, 50, n).astype(np.uint32)
    ts = rng.integers(0, 40, n).astype(np.int64)  # many equal times: ties go by arrival
    if monotone:
        ts = np.sort(ts)
    assert account_order(account, ts).tolist() == _composite_order(account, ts)


def test_compact_due_leaves_no_merge_the_policy_calls_for(tmp_path: Path, rng: np.random.Generator) -> None:
    entries = list(random_entries(rng, 120))
    root = tmp_path / "t"
    trove = Trove.open(small_config(root, partition_s=86_400), start=False)
    try:
        load_sync(trove, entries)  # the writer only: no compactor thread merges behind the test's back
        assert compaction.plan(trove.manifest, trove.config), "the load leaves merges due (else the test is void)"
        trove.compact_due()
        assert compaction.plan(trove.manifest, trove.config) == []
        assert trove.counters["merges"] > 0
        # Every row once: a run's first file (payer-sorted) or an ingest segment's only file.
        rows = [r for s in trove.manifest.segments for r in table_rows(pq.read_table(root / s.files[0].path))]
        assert sorted(rows) == sorted(reference_rows(entries))
    finally:
        trove.close()


def test_the_childs_stats_say_how_long_it_waited_for_a_cpu(tmp_path: Path, rng: np.random.Generator) -> None:
    assert process_runqueue_wait_ns(os.getpid()) >= 0
    assert process_runqueue_wait_ns(2**22 + 12_345) == 0  # no such process: nothing to report
    trove = TroveProcess.open(small_config(tmp_path / "t"))
    for seq, batch, codes in random_entries(rng, 20):
        trove.append(batch, codes, seq)
    live = trove.stats()["process_runqueue_wait_ns"]
    trove.close()
    final = trove.stats()
    assert isinstance(live, int) and live >= 0
    assert final["process_runqueue_wait_ns"] >= 0 and final["process_cpu_ns"] > 0


def test_a_leftover_merge_spill_is_removed_at_open(tmp_path: Path) -> None:
    root = tmp_path / "t"
    Trove.open(small_config(root), start=False).close()
    spill = root / compaction.SPILL_DIR
    spill.mkdir()
    (spill / "duckdb_temp_block-1.block").write_bytes(b"x" * 100)
    Trove.open(small_config(root), start=False).close()
    assert not spill.exists()


def test_bench_reports_the_steady_state_cost_in_both_modes(tmp_path: Path) -> None:
    for process in (True, False):
        config = small_config(Path(""), segment_rows=4_000, row_group_rows=512, fanin=4, process=process)
        r = run_bench(
            rows=30_000, accounts=3_000, seed=4, queries=2, directory=str(tmp_path / f"b{process}"), config=config
        )
        assert r.rows == 30_000
        assert r.steady_cpu_ns_per_row > 0
        # Past the steady state, the final merge of everything costs more CPU, never less.
        total_cpu_s = r.process_cpu_s if process else r.writer_cpu_s + r.compaction_cpu_s
        assert total_cpu_s * 1e9 / r.rows >= r.steady_cpu_ns_per_row * 0.999
