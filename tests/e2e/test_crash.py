"""Crash test: kill -9 the server under pipelined load, restart it on its journal, check the ledger.

What must hold after the restart:
* every transfer the client saw acknowledged is in the ledger: resubmitting it gives DUPLICATE
  (or the same validation code, for transfers refused before their id was checked);
* the recovered balances equal a one-at-a-time reference ledger that applied exactly the first
  K Submits, once each, for some K at least the number of acknowledged Submits (a Submit that was
  journalled but whose Results never arrived may be in, never half or twice);
* the acknowledged codes equal the reference's codes; the conservation audit passes.

Kill points are drawn from the test's seed; ``CBDC_CRASH_RUNS=N`` runs N of them (default 3).
With snapshots on (issue 15: frequent snapshots, small journal segments, so restarts start from a
snapshot and old segments are deleted), the same checks hold, for kills at a random time and for
kills while a snapshot child is writing its file (the child is stopped mid-write, the server
killed, and the child let go again after the restart).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.client import Client
from engine.codes import ResultCode
from engine.ledger import Ledger
from engine.wire import Results
from loadgen.generator.workload import Workload, WorkloadConfig

ACCOUNTS = 2_000
SEED = 4_242
OPERATOR = 1
SUBMIT = 400  # transfers per Submit
IN_FLIGHT = 8  # Submits pipelined before waiting for Results
RUNS = int(os.environ.get("CBDC_CRASH_RUNS") or 3)


SNAPSHOTS = ("--snapshot-every", "1k", "--journal-segment-bytes", str(1 << 16))


def _serve(journal: Path, fsync: str, log: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--accounts", str(ACCOUNTS)]
    cmd += ["--seed", str(SEED), "--journal", str(journal), "--fsync", fsync, *extra]
    with log.open("a") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        _stop(proc, kill=True)
        raise AssertionError(f"server did not start: {line!r}\n{log.read_text()}")
    return proc, int(line.rsplit(":", 1)[1])


def _stop(proc: subprocess.Popen[str], *, kill: bool) -> None:
    if kill:
        proc.kill()
    else:
        proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _kill_mid_snapshot(proc: subprocess.Popen[str], snapshots: Path, stopped: list[int]) -> None:
    """Once a snapshot is complete, wait for the next child to be writing (its partial file names
    its pid), stop it there, kill the server. Gives up waiting after 5 s and kills anyway."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ready = snapshots.is_dir() and any(snapshots.glob("snap-*.cbdcsnap"))
        for partial in snapshots.glob("*.partial-*") if ready else ():
            pid = int(partial.name.rsplit("-", 1)[1])
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            if partial.exists():
                stopped.append(pid)
                proc.kill()
                return
            os.kill(pid, signal.SIGCONT)  # it had finished its file already: catch another one
        time.sleep(0.0005)
    proc.kill()


def _load_until_killed(
    port: int, proc: subprocess.Popen[str], kill_after_s: float, killer: threading.Thread | None = None
) -> tuple[list[np.ndarray], list]:
    """Pipelined Submits until the server dies; (every batch sent, codes of the acknowledged ones)."""
    workload = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=SEED), stream=9)
    sent: list[np.ndarray] = []
    acked: list[np.ndarray] = []
    if killer is None:
        killer = threading.Timer(kill_after_s, proc.kill)  # SIGKILL: no handler, no flush, no goodbye
    client = Client("127.0.0.1", port, operator=OPERATOR)
    killer.start()
    try:
        while True:
            batch = workload.batch(SUBMIT, first_id=len(sent) * SUBMIT, operator=OPERATOR)
            client.submit(batch)
            sent.append(batch)
            while len(sent) - len(acked) >= IN_FLIGHT:
                msg = client.recv()
                assert type(msg) is Results, msg
                acked.append(np.frombuffer(msg.codes, dtype=np.uint8).copy())
    except ConnectionError:
        pass
    finally:
        killer.join()
        client.close()
    return sent, acked


@pytest.mark.slow
@pytest.mark.parametrize("run", range(RUNS))
def test_kill_9_loses_no_acknowledged_transfer(tmp_path: Path, seed: int, run: int) -> None:
    rng = np.random.default_rng([seed, run])
    kill_after_s = float(rng.uniform(0.15, 0.8))
    fsync = ["batch", "interval:5", "off"][run % 3]
    print(f"[crash] kill after {kill_after_s:.3f} s, fsync {fsync}")
    journal, log = tmp_path / "journal", tmp_path / "server.log"
    proc, port = _serve(journal, fsync, log)
    try:
        sent, acked = _load_until_killed(port, proc, kill_after_s)
    finally:
        _stop(proc, kill=True)
    _check_restart(journal, fsync, log, proc, sent, acked)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["random", "random-thread", "mid-snapshot", "mid-snapshot"])
def test_kill_9_with_snapshots_loses_no_acknowledged_transfer(tmp_path: Path, seed: int, when: str) -> None:
    rng = np.random.default_rng([seed, 15])
    kill_after_s = float(rng.uniform(0.3, 0.8))
    fsync = "batch" if when.startswith("random") else str(rng.choice(["batch", "interval:5", "off"]))
    journal, log = tmp_path / "journal", tmp_path / "server.log"
    snapshots = tmp_path / "journal.snapshots"
    # random-thread: copy-on-update snapshots (a writer thread in the server) instead of a child
    extra = (*SNAPSHOTS, "--snapshot-method", "thread" if when == "random-thread" else "fork")
    proc, port = _serve(journal, fsync, log, extra)
    stopped: list[int] = []
    killer = (
        threading.Thread(target=_kill_mid_snapshot, args=(proc, snapshots, stopped)) if when == "mid-snapshot" else None
    )
    try:
        sent, acked = _load_until_killed(port, proc, kill_after_s, killer)
    finally:
        _stop(proc, kill=True)
    print(f"[crash] snapshots on, fsync {fsync}, kill {when}: snapshot child stopped mid-write: {stopped}")
    try:
        _check_restart(journal, fsync, log, proc, sent, acked, extra, stopped)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):  # it went on, finished and was reaped
                os.kill(pid, signal.SIGKILL)
    assert "restored snapshot" in log.read_text(), "the restart did not start from a snapshot"


def _check_restart(
    journal: Path,
    fsync: str,
    log: Path,
    proc: subprocess.Popen[str],
    sent: list[np.ndarray],
    acked: list,
    extra: tuple[str, ...] = (),
    stopped: list[int] | None = None,
) -> None:
    """Restart on the journal; every acknowledged transfer is in, once, and the ledger matches a prefix."""
    assert proc.returncode == -9
    assert len(acked) > 0, "nothing was acknowledged before the kill: the kill point is too early"

    proc, port = _serve(journal, fsync, log, extra)
    for pid in stopped or ():
        os.kill(pid, signal.SIGCONT)  # the orphaned child finishes (or fails) while the restart serves
    try:
        # The start-up notes follow the listening line on stderr.
        deadline = time.monotonic() + 10
        while "recovered from journal" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        with Client("127.0.0.1", port, operator=OPERATOR) as c:
            balances = np.array([c.balance(a) for a in range(ACCOUNTS)], dtype=np.int64)
            # The reference: the same initial ledger, Submits applied one by one, in order.
            initial, wallet_class = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=SEED)).initial_state()
            ref = Ledger(ACCOUNTS, balance_fen=initial, wallet_class=wallet_class, operators=64)
            ref_codes = [ref.apply(b) for b in sent[: len(acked)]]
            for got, want in zip(acked, ref_codes, strict=True):
                assert np.array_equal(got, want)
            k = len(acked)
            while not np.array_equal(ref.balance, balances):
                assert k < len(sent), "recovered balances match no prefix of the Submits sent"
                ref.apply(sent[k])
                k += 1
            print(f"[crash] {len(sent)} Submits sent, {len(acked)} acknowledged, {k} in the recovered ledger")
            # Nothing acknowledged can be applied again.
            for batch, codes in zip(sent[: len(acked)], acked, strict=True):
                again = c.transfer(batch)
                # STALE_ID: older than the idempotency window (2**20 ids), refused as well.
                assert np.isin(again[codes == ResultCode.OK], [ResultCode.DUPLICATE, ResultCode.STALE_ID]).all()
            after = np.array([c.balance(a) for a in range(ACCOUNTS)], dtype=np.int64)
            assert np.array_equal(after, balances)
            assert c.audit().ok
    finally:
        _stop(proc, kill=False)
