"""The trove wired into the server: ``--trove``, journal numbers, restarts, a stopped trove."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.hooks.surveillance_log import SurveillanceLog, SurveillanceLogConfig
from engine.profiles import build_hooks, trove_needed
from engine.server import ServerThread
from engine.trove.config import TroveConfig
from engine.trove.manifest import load_manifest
from engine.trove.process import TroveProcess
from engine.trove.store import Trove
from loadgen.cli.trove import stats as trove_stats
from loadgen.generator.workload import Workload
from loadgen.results.run import TroveOutcome
from tests.support.servers import StartServer, connect


def _trove_hook(directory: Path, *, process: bool = True) -> SurveillanceLog:
    config = TroveConfig(dir=str(directory), flush_interval_s=0.05, process=process)
    return SurveillanceLog(SurveillanceLogConfig(trove=config))


def _send(st: ServerThread, workload: Workload, batches: int, *, first: int) -> int:
    with connect(st, operator=2) as c:
        for i in range(batches):
            c.transfer(workload.batch(150, first_id=(first + i) * 150, operator=2))
    return batches * 150


def _transfers(st: ServerThread) -> int:
    return st.call(lambda: st.server.ledger.stats.transfers)  # type: ignore[no-any-return,union-attr]


def _distinct_rows(directory: Path) -> tuple[int, int]:
    """(rows, distinct (batch_seq, batch_index)) over the files the manifest lists (one ordering of each)."""
    manifest = load_manifest(directory)
    assert manifest is not None
    paths = [directory / s.file("payer").path for s in manifest.segments]
    tables = [pq.read_table(p, columns=["batch_seq", "batch_index"]) for p in paths]
    keys = np.concatenate([t["batch_seq"].to_numpy() * (1 << 20) + t["batch_index"].to_numpy() for t in tables])
    return len(keys), len(np.unique(keys))


@pytest.mark.parametrize("lost", [False, True], ids=["trove-kept", "trove-lost"])
def test_journalled_restart_keeps_one_trove_row_per_transfer(
    start_server: StartServer, workload: Workload, tmp_path: Path, lost: bool
) -> None:
    journal, trove = tmp_path / "j", tmp_path / "trove"
    st = start_server(hooks=[_trove_hook(trove)], journal=str(journal))
    sent = _send(st, workload, 4, first=0)
    st.stop()  # closing the hook flushes the trove
    first = trove_stats(str(trove))
    assert first["rows"] == sent and first["problems"] == []
    if lost:
        shutil.rmtree(trove)  # everything must come back from the journal

    st = start_server(hooks=[_trove_hook(trove)], journal=str(journal))
    assert st.server.recovery is not None and st.server.recovery.batches == 4
    assert not st.server.outputs_set_aside  # a journalled trove is kept, not regenerated
    sent += _send(st, workload, 3, first=4)
    through_engine = _transfers(st)
    st.stop()
    after = trove_stats(str(trove))
    assert after["rows"] == through_engine == sent
    rows, distinct = _distinct_rows(trove)
    assert rows == distinct == sent  # no duplicates from the replay
    assert after["durable_through_seq"] > first["durable_through_seq"]


def test_trove_dir_reaches_the_hook_and_serve_refuses_without_one(tmp_path: Path) -> None:
    assert trove_needed("full") and trove_needed("surveillance") and not trove_needed("baseline")
    (hook,) = [h for h in build_hooks("surveillance", trove_dir=str(tmp_path)) if isinstance(h, SurveillanceLog)]
    assert hook.config.trove.dir == str(tmp_path)
    cmd = [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--profile", "full", "--accounts", "1000"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "listening" not in done.stdout
    assert "--trove DIR" in done.stderr


def _wait_for_exit(pid: int) -> None:
    """Until ``pid`` is a zombie (dead, not yet reaped by its parent) or gone."""
    for _ in range(1000):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not exit")


def _stop_disk_full(hook: SurveillanceLog) -> None:
    assert isinstance(hook.trove, Trove)
    hook.trove.flush()  # as below: the rows sent before the stop are durable
    hook.trove._stop_ingest(OSError(errno.ENOSPC, "No space left on device"))


def _kill_trove_process(hook: SurveillanceLog) -> None:
    assert isinstance(hook.trove, TroveProcess)
    hook.trove.flush()  # what was sent is durable: every row counted below is one sent after the kill
    os.kill(hook.trove.pid, signal.SIGKILL)
    _wait_for_exit(hook.trove.pid)


@pytest.mark.parametrize(
    ("process", "stop", "why"),
    [(False, _stop_disk_full, "No space left"), (True, _kill_trove_process, "killed by signal 9")],
    ids=["disk-full", "trove-process-killed"],
)
def test_a_stopped_trove_is_reported_not_counted_as_observe_errors(
    start_server: StartServer,
    workload: Workload,
    tmp_path: Path,
    process: bool,
    stop: Callable[[SurveillanceLog], None],
    why: str,
) -> None:
    hook = _trove_hook(tmp_path / "trove", process=process)
    st = start_server(hooks=[hook])
    _send(st, workload, 1, first=0)
    assert hook.trove is not None
    st.call(lambda: stop(hook))
    _send(st, workload, 2, first=1)
    with connect(st, operator=2) as c:
        stats = c.stats()
    st.stop()
    assert stats["hooks"]["surveillance_log"]["errors"] == 0, stats["hooks"]["surveillance_log"]
    assert why in stats["trove"]["failure"]
    outcome = TroveOutcome.of(stats)
    assert outcome is not None and outcome.rows_not_persisted == 300 and outcome.failure
    assert outcome.rows == 150  # the batch before the stop is in the trove
    assert TroveOutcome.of({}) is None
