"""The trove in a child process: same rows as the reference, back-pressure, a killed child, its watermark.

Each test starts one child (about half a second); the stores' own logic is tested in-process in
``test_trove.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.hooks.surveillance_log import SurveillanceLog, SurveillanceLogConfig
from engine.ledger import Ledger
from engine.records import make_batch
from engine.trove.manifest import load_manifest
from engine.trove.process import SLOT_ROWS, TroveProcess, child_malloc_env
from engine.trove.store import Trove, TroveStopped
from tests.engine.test_trove import START_NS, random_entries, reference_rows, small_config, table_rows

Entries = list[tuple[int, np.ndarray, np.ndarray]]


def _big_batch(rng: np.random.Generator, n: int, seq: int, t0: int) -> tuple[int, np.ndarray, np.ndarray]:
    batch = make_batch(
        rng.integers(0, 60, n),
        rng.integers(0, 60, n),
        rng.integers(1, 10_000, n),
        transfer_id=np.arange(n) + seq * 100_000,
        timestamp_ns=t0 + np.arange(n) * 1_000_000,
        location_cell=rng.integers(0, 20, n),
        device_id=rng.integers(0, 120, n),
    )
    return seq, batch, rng.choice([0, 0, 7], n).astype(np.uint8)


def _rows_on_disk(root: Path) -> list[tuple[int, ...]]:
    manifest = load_manifest(root)
    assert manifest is not None
    rows: list[tuple[int, ...]] = []
    for s in manifest.segments:
        rows += table_rows(pq.read_table(root / s.file("payer").path))
    return sorted(rows)


def test_the_child_writes_exactly_the_reference_rows_and_waits_when_full(tmp_path: Path, rng) -> None:
    entries: Entries = list(random_entries(rng, 30))
    # A batch larger than a slot spans several; with one slot the sequencer must wait for the child.
    entries.append(_big_batch(rng, SLOT_ROWS + 123, 31, START_NS + 3 * 3_600 * 10**9))
    entries.append((32, make_batch([], [], []), np.zeros(0, dtype=np.uint8)))  # an empty batch is harmless
    trove = TroveProcess.open(small_config(tmp_path / "t", partition_s=3600, ring_slots=1, queue_batches=1))
    try:
        assert trove.durable_seq() == 0 and trove.pid != os.getpid()
        for seq, batch, codes in entries:
            trove.append(batch, codes, seq)
        trove.flush(compact=True)
        st = trove.stats()
        assert st["append_waits"] >= 1 and st["append_wait_ns"] > 0  # back-pressure, counted
        assert st["backlog_rows"] == 0 and st["backlog_rows_peak"] >= SLOT_ROWS
        assert st["rows_not_persisted"] == 0 and st["failure"] == ""
        assert st["rows"] == len(reference_rows(entries)) and st["runs"] >= 1
        assert trove.durable_seq() == 32
        assert _rows_on_disk(tmp_path / "t") == sorted(reference_rows(entries))
        with trove.snapshot() as segments:  # the child keeps these files until the block ends
            assert sum(s.rows for s in segments) == st["rows"]
    finally:
        trove.close()
    # The child's CPU is the hook's cost; after close the figure is final.
    assert trove.background_cpu_ns() > 0 and trove.stats()["rows"] == st["rows"]


def test_open_errors_come_back_and_a_temporary_trove_goes_at_close(tmp_path: Path) -> None:
    Trove.open(small_config(tmp_path / "t", partition_s=86_400), start=False).close()
    with pytest.raises(ValueError, match="partitioned by 86400 s"):
        TroveProcess.open(small_config(tmp_path / "t", partition_s=3600))
    temporary = TroveProcess.open(small_config(Path(""), dir=""))
    root = temporary.root
    assert root.exists()
    temporary.close()
    assert not root.exists()


def test_sigkill_while_a_segment_is_written_leaves_a_consistent_trove_that_rebuilds(tmp_path: Path, rng) -> None:
    root = tmp_path / "t"
    config = small_config(root, segment_rows=20_000, flush_interval_s=30.0, compact=False)
    entries = [_big_batch(rng, 2_500, seq, START_NS + seq * 2_500 * 1_000_000) for seq in range(1, 31)]
    trove = TroveProcess.open(config)
    caught: list[Path] = []

    def kill_mid_write() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tmps = [*root.glob("runs/*/*.tmp"), *root.glob("segments/*/*.tmp")]
            if tmps:
                os.kill(trove.pid, signal.SIGKILL)
                caught.extend(tmps)
                return
            time.sleep(0.0005)

    watcher = threading.Thread(target=kill_mid_write)
    watcher.start()
    sent = 0
    try:
        for seq, batch, codes in entries:
            trove.append(batch, codes, seq)
            sent += 1
        trove.flush()
    except TroveStopped:
        pass
    watcher.join()
    st = trove.stats()
    trove.close()
    assert caught and any(p.exists() for p in caught), "the child was not killed in the middle of a write"
    assert "killed by signal 9" in st["failure"]
    assert st["rows_not_persisted"] > 0  # rows handed over and lost with the child are counted

    reopened = Trove.open(config)
    try:
        assert not [
            *root.glob("runs/*/*.tmp"),
            *root.glob("segments/*/*.tmp"),
        ]  # the interrupted write is not part of the trove
        durable = reopened.durable_through_seq
        assert durable < sent
        assert _rows_on_disk(root) == sorted(reference_rows([e for e in entries if e[0] <= durable]))
        reopened.rebuild_from(entries)  # the journal: what the trove lacks comes back, nothing twice
        assert _rows_on_disk(root) == sorted(reference_rows(entries))
    finally:
        reopened.close()


def test_the_hook_reports_the_troves_watermark_for_the_journal(tmp_path: Path, rng) -> None:
    log = SurveillanceLog(SurveillanceLogConfig(trove=small_config(tmp_path / "t"), deferred=False))
    log.journalled = True  # as a journalled server sets it before recovery
    ledger = Ledger(60, balance_fen=5_000, hooks=[log])
    assert log.durable_journal_seq() == 0
    for seq, batch, _ in random_entries(rng, 5):
        log.note_journal_seq(100 + seq)  # as a journalled server numbers the batches
        ledger.apply(batch)
    assert log.trove is not None
    log.trove.flush()
    assert log.durable_journal_seq() == 105
    log.close()
    assert SurveillanceLog(SurveillanceLogConfig(mode="buffer")).durable_journal_seq() is None


def test_bench_loads_through_the_child_and_probe_times_each_kind(tmp_path: Path, capsys) -> None:
    from engine.trove.bench import QUERY_KINDS, run_bench
    from loadgen.cli.main import main

    config = small_config(Path(""), segment_rows=5_000, row_group_rows=1_024, fanin=4)
    result = run_bench(rows=20_000, accounts=2_000, seed=3, queries=3, directory=str(tmp_path / "b"), config=config)
    assert result.rows == 20_000 and result.process_cpu_s > 0 and result.runs >= 1
    assert set(result.queries) == set(QUERY_KINDS) and result.queries["payments_day"]["mean_rows"] > 0
    assert main(["trove", "probe", str(tmp_path / "b"), "--seconds", "0.5", "--accounts", "2000", "--json"]) == 0
    probed = json.loads(capsys.readouterr().out)
    assert set(probed) == set(QUERY_KINDS)
    assert all(t["queries"] >= 1 and t["p99_ms"] >= t["p50_ms"] > 0 for t in probed.values())


def test_the_child_runs_with_its_malloc_settings_unless_the_environment_sets_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # the caller's own setting wins
    trove = TroveProcess.open(small_config(tmp_path / "t"))
    try:
        environ = dict(e.split("=", 1) for e in Path(f"/proc/{trove.pid}/environ").read_text().split("\0") if "=" in e)
    finally:
        trove.close()
    expected = {**child_malloc_env(), "MALLOC_ARENA_MAX": "2"}
    assert {k: environ.get(k) for k in expected} == expected


def _thread_nices(pid: int) -> dict[int, int]:
    """Niceness of each thread of ``pid`` (``/proc/PID/task/TID/stat``, field 19)."""
    nices = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(FileNotFoundError):
            nices[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[16])
    return nices


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_every_thread_of_the_child_runs_at_its_niceness(tmp_path: Path) -> None:
    config = msgspec.structs.replace(small_config(tmp_path / "t"), process_nice=7)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    trove = TroveProcess.open(config)
    try:
        trove.append(*_big_batch(np.random.default_rng(1), 5_000, 1, START_NS)[1:], 1)
        trove.flush()  # the writer, flusher and whatever pools a flush starts are alive now
        nices = _thread_nices(trove.pid)
    finally:
        trove.close()
    assert len(nices) >= 4 and set(nices.values()) == {min(19, base + 7)}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_renice_threads_reaches_threads_started_before_it() -> None:
    # In a child interpreter: a process cannot take its niceness back.
    code = (
        "import os, threading; from engine.trove.process import renice_threads\n"
        "go = threading.Event(); t = threading.Thread(target=go.wait); t.start()\n"
        "renice_threads(3)\n"
        "print(os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, t.native_id))\n"
        "go.set(); t.join()\n"
    )
    base = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out] == [min(19, base + 3)] * 2
