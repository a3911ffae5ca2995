"""Faults injected at the journal's file layer: failed writes and fsyncs, and power cuts.

``FaultyIO`` and ``RecordingIO`` stand where ``os.write``/``os.fsync`` stand (``Journal.io``).
The power-cut test is in the spirit of ALICE and CrashMonkey: record every write and fsync of a
short run, then build the files a power cut could leave (for each of the last K unsynced writes:
dropped, or torn at each 512-byte boundary), recover each, and check that no acknowledged batch is
lost and none that was never written appears.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.client import Client
from engine.codes import ResultCode
from engine.journal import AdminEntry, Journal, JournalFailed, JournalHeader, OsIO, create, recover
from engine.ledger import Ledger
from engine.server import ServerConfig, ServerThread
from engine.wire import Error, ErrorCode, Results
from loadgen.generator.workload import BatchPool, Workload, WorkloadConfig
from tests.support.servers import TEST_ACCOUNTS, TEST_SEED, StartServer, connect

HEADER = JournalHeader(accounts=3_000, seed=0, operators=64, profile="baseline")
SECTOR = 512


class FaultyIO(OsIO):
    """Fails the ``fail_write``-th write (after writing half of it) or the ``fail_fsync``-th fsync."""

    def __init__(self, *, fail_write: int = 0, fail_fsync: int = 0, err: int = errno.EIO) -> None:
        self.fail_write, self.fail_fsync, self.err = fail_write, fail_fsync, err
        self.writes = self.fsyncs = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.writes += 1
        if self.writes == self.fail_write:
            os.write(fd, data[: len(data) // 2])  # a short write, then the error (a full disk)
            raise OSError(self.err, os.strerror(self.err))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        if self.fsyncs == self.fail_fsync:
            raise OSError(self.err, os.strerror(self.err))
        super().fsync(fd)


class RecordingIO(OsIO):
    """Records each write (offset, bytes) and, per fsync, how many writes it covers."""

    def __init__(self, start: int) -> None:
        self.offset = start
        self.writes: list[tuple[int, bytes]] = []
        self.fsync_after: list[int] = []  # number of writes issued before each fsync started

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.writes.append((self.offset, bytes(data)))
        self.offset += len(data)
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        # What an fsync covers for sure: the writes done before it started (a background fsync
        # runs while the loop writes on; those may or may not be covered).
        before = len(self.writes)
        super().fsync(fd)
        self.fsync_after.append(before)


class GatedIO(OsIO):
    """Each fsync waits for a permit (``permits.release()``; at most 10 s)."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.started = 0
        self.threads: list[str] = []

    def fsync(self, fd: int) -> None:
        self.started += 1
        self.threads.append(threading.current_thread().name)
        self.permits.acquire(timeout=10)
        super().fsync(fd)


def test_batch_fsync_is_pipelined_and_results_wait_for_their_fsync(start_server: StartServer, tmp_path: Path) -> None:
    """``--fsync batch`` in a server: the loop applies the next batches while an fsync runs on the
    journal's thread, and no Results leave before an fsync covering their batch has returned."""
    workload = Workload(
        WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED, invalid_fraction=0, duplicate_fraction=0)
    )
    st = start_server(journal=str(tmp_path / "j"))
    c = connect(st)
    c.transfer(workload.batch(100, first_id=0))  # the handshake's and this batch's fsyncs ran freely
    io = GatedIO()

    def gate() -> bool:
        assert st.server.journal is not None and st.server.journal.defers_acks
        st.server.journal.io = io
        return True

    st.call(gate)
    a = c.submit(workload.batch(100, first_id=100))

    def applied(n: int) -> bool:
        for _ in range(500):
            if st.call(lambda: st.server.ledger.stats.transfers) >= n:
                return True
            time.sleep(0.01)
        return False

    assert applied(200)
    b = c.submit(workload.batch(100, first_id=200))  # a's fsync is still blocked
    assert applied(300)  # the loop applied b meanwhile
    held = st.call(lambda: [seq for seq, _, _ in st.server.batcher.held])
    durable = st.call(lambda: st.server.journal.durable_seq)
    assert len(held) == 2 and all(seq > durable for seq in held), (held, durable)
    assert io.started == 1  # one fsync at a time: b's waits for a's
    io.permits.release(2)
    replies = [c.recv(), c.recv()]
    assert [type(m) for m in replies] == [Results, Results]
    assert [m.seq for m in replies] == [a, b]  # type: ignore[union-attr]
    assert st.call(lambda: st.server.journal.durable_seq) >= held[-1]
    c.close()
    st.stop()


def test_results_held_for_an_fsync_are_bounded_by_the_queue_limit(start_server: StartServer, tmp_path: Path) -> None:
    """Past ``queue_limit`` transfers held for an fsync, the loop waits for the disk itself (the
    clients then through their sockets) rather than hold Results without end."""
    workload = Workload(
        WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED, invalid_fraction=0, duplicate_fraction=0)
    )
    st = start_server(journal=str(tmp_path / "j"), queue_limit=200, max_batch=100)
    c = connect(st)
    c.transfer(workload.batch(100, first_id=0))
    io = GatedIO()
    st.call(lambda: setattr(st.server.journal, "io", io))
    seqs = []
    for i in range(3):
        seqs.append(c.submit(workload.batch(100, first_id=100 * (i + 1))))
        # One at a time: sent together they would queue 300 transfers past the queue's own limit
        # (200) and the last would be answered OVERLOADED at once, ahead of the others (seen under
        # a loaded machine). The first two are applied and held for the gated fsync; the loop is
        # free to answer ``st.call`` until the third.
        for _ in range(500):
            if i == 2 or st.call(lambda: st.server.batcher.held_transfers) >= 100 * (i + 1):
                break
            time.sleep(0.01)
    for _ in range(500):  # the third batch takes the held Results past 200: the loop blocks in an fsync
        if len(io.threads) >= 1 and io.started >= 1:
            break
        time.sleep(0.01)
    time.sleep(0.2)
    io.permits.release(10)
    replies = [c.recv() for _ in seqs]
    assert [m.seq for m in replies] == seqs and all(type(m) is Results for m in replies)  # type: ignore[union-attr]
    assert any(not name.startswith("journal-fsync") for name in io.threads), io.threads  # synced on the loop
    assert st.call(lambda: (len(st.server.batcher.held), st.server.batcher.held_transfers)) == (0, 0)
    stats = st.call(lambda: st.server.stats())
    assert stats["journal"]["held_transfers"] == 0 and stats["journal"]["durable_seq"] >= 1
    c.close()
    st.stop()


def _ledger(workload: Workload) -> Ledger:
    balance, wallet_class = workload.initial_state()
    return Ledger(len(balance), balance_fen=balance, wallet_class=wallet_class)


@pytest.mark.parametrize(("where", "err"), [("write", errno.ENOSPC), ("write", errno.EIO), ("fsync", errno.EIO)])
def test_failed_write_or_fsync_is_never_retried(tmp_path: Path, where: str, err: int) -> None:
    path = tmp_path / "j"
    create(path, HEADER)
    io = FaultyIO(**{f"fail_{where}": 3}, err=err)  # type: ignore[arg-type]
    journal = Journal(path, "batch", io=io)
    entry = AdminEntry("freeze", [1])
    journal.append_admin(entry)  # write 1, fsync 1, write 2 (its SYNC)
    with pytest.raises(OSError) as info:
        journal.append_admin(entry)  # write 3 fails, or fsync 2 ... (the third fsync fails below)
        journal.append_admin(entry)
    assert info.value.errno == err and journal.failed is not None
    calls = (io.writes, io.fsyncs)
    with pytest.raises(JournalFailed):
        journal.append_admin(entry)
    with pytest.raises(JournalFailed):
        journal.sync()
    journal.close()  # closes without an fsync: a retried fsync could report pages already dropped
    assert (io.writes, io.fsyncs) == calls
    # What the file really holds replays. A half-written entry is in the tail and cut; an entry
    # whose fsync failed is whole in the tail (never acknowledged: its outcome was unknown).
    rec = recover(path, lambda b, c: b, lambda e: None)
    if where == "write":
        assert (rec.admin_ops, rec.durable_seq, rec.entries) == (1, 2, 3) and rec.truncated_bytes > 0
    else:
        assert (rec.admin_ops, rec.durable_seq, rec.entries) == (3, 4, 6) and rec.truncated_bytes == 0


@pytest.mark.parametrize(("where", "err"), [("write", errno.ENOSPC), ("fsync", errno.EIO)])
def test_server_acknowledges_nothing_that_was_not_durably_written(
    start_server: StartServer, tmp_path: Path, where: str, err: int
) -> None:
    # No invalid or repeated ids, so a resubmitted batch is either all DUPLICATE or none of it.
    workload = Workload(
        WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED, invalid_fraction=0, duplicate_fraction=0)
    )
    journal = tmp_path / "j"
    st = start_server(journal=str(journal))
    c = connect(st)
    acked = [workload.batch(100, first_id=i * 100) for i in range(3)]
    for b in acked:
        c.transfer(b)
    io = FaultyIO(**{f"fail_{where}": 1}, err=err)  # type: ignore[arg-type]

    def break_disk() -> None:
        assert st.server.journal is not None
        st.server.journal.io = io

    st.call(break_disk)
    failed = workload.batch(100, first_id=300)
    c.submit(failed)
    msg = c.recv()
    assert type(msg) is Error and msg.code == ErrorCode.JOURNAL_FAILED, msg
    assert os.strerror(err) in msg.message
    with pytest.raises(ConnectionError):
        while True:
            assert type(c.recv()) is not Results
    c.close()
    st.stop()
    assert io.fsyncs == (1 if where == "fsync" else 0)  # the failed fsync was not retried at close

    again: ServerThread = start_server(journal=str(journal))
    assert again.server.recovery is not None
    with connect(again) as c2:
        for b in acked:  # every acknowledged transfer is in: all duplicates now
            codes = c2.transfer(b)
            assert not (codes == 0).any()
        # The failed Submit's outcome was unknown; it is in whole or not at all, never half.
        redo = c2.transfer(failed) == ResultCode.DUPLICATE
        assert redo.all() or not redo.any(), f"{int(redo.sum())} of {len(redo)} of the failed Submit were in"
        assert c2.audit().ok


def _recording(ledger: Ledger, seen: list[np.ndarray]):  # type: ignore[no-untyped-def]
    def apply(batch: np.ndarray, clock: int) -> np.ndarray:
        assert clock == ledger.clock.payments
        seen.append(batch)
        return ledger.apply(batch)

    return apply


def _power_cut_states(base: bytes, io: RecordingIO, k: int) -> list[tuple[str, bytes, int]]:
    """Files a power cut after each of the last ``k`` writes could leave, with the number of
    writes an fsync had covered at that moment (what must survive)."""
    states = []
    n = len(io.writes)
    for t in range(max(0, n - k), n):
        synced = max([w for w in io.fsync_after if w <= t], default=0)
        durable = bytearray(base)
        for off, data in io.writes[:synced]:
            durable[off : off + len(data)] = data
        unsynced = io.writes[synced : t + 1]
        for j in range(len(unsynced)):
            # Dropped: every other unsynced write reached the disk, this one did not (a hole of
            # zeros where it would be, or the file ends before it).
            f = bytearray(durable)
            for i, (off, data) in enumerate(unsynced):
                if i != j:
                    f[len(f) : off + len(data)] = bytes(max(0, off + len(data) - len(f)))
                    f[off : off + len(data)] = data
            states.append((f"cut after write {t}, write {synced + j} dropped", bytes(f), synced))
            # Torn: the writes before it reached the disk, it only up to a sector boundary.
            off, data = unsynced[j]
            for keep in range(SECTOR, len(data), SECTOR):
                g = bytearray(durable)
                for o, d in unsynced[:j]:
                    g[o : o + len(d)] = d
                g[off:] = data[:keep]
                states.append((f"cut after write {t}, write {synced + j} torn at {keep}", bytes(g), synced))
    return states


@pytest.mark.parametrize("fsync", ["batch", "interval:1000000", "batch-pipelined"])
def test_power_cut_loses_no_acknowledged_batch_and_invents_none(tmp_path: Path, seed: int, fsync: str) -> None:
    workload = Workload(WorkloadConfig(accounts=3_000, seed=seed))
    path = tmp_path / "j"
    create(path, HEADER)
    base = path.read_bytes()
    io = RecordingIO(len(base))
    pipelined = fsync == "batch-pipelined"
    journal = Journal(path, "batch" if pipelined else fsync, io=io)
    ledger = _ledger(workload)
    stream = BatchPool(workload, 3, 40)  # ~2 KB entries: several sector boundaries each
    written: list[np.ndarray] = []
    covered: list[int] = []  # per batch: how many writes must be on disk for it to be there
    acked: list[int] = []  # pipelined: the entries each fsync's completion made durable (the acks)
    entry_of: list[int] = []

    def append(i: int) -> None:
        b = stream.next().copy()
        clock = ledger.clock.payments
        covered.append(len(io.writes) + 1)  # its entry is the first write of the append
        entry_of.append(journal.append_batch(b, ledger.apply(b), clock, wait=not pipelined))
        written.append(b)
        if fsync.startswith("interval") and i % 4 == 3:
            journal.sync()  # the interval's fsync, at chosen points: several unsynced writes between

    if pipelined:
        # The server's pipelined group commit: fsyncs on the journal's thread while the loop
        # appends on; a batch is acknowledged when ``on_durable`` reaches its entry.
        async def run() -> None:
            loop = asyncio.get_running_loop()
            journal.start_timer(loop.call_later, lambda exc: None, loop=loop)
            journal.on_durable = acked.append
            for i in range(14):
                append(i)
                if i % 3 == 2:
                    await asyncio.sleep(0.002)  # completions come back between some appends only

        asyncio.run(run())
        assert journal.defers_acks
    else:
        for i in range(14):
            append(i)
    journal.close()
    if pipelined:
        assert max(acked) >= entry_of[-1]  # the close's sync acknowledged the last
        # Every acknowledgement followed an fsync that started after the batch's entry was written.
        for durable in acked[:-1]:
            n_acked = sum(1 for e in entry_of if e <= durable)
            assert n_acked == 0 or any(w >= covered[n_acked - 1] for w in io.fsync_after), durable
    k = 10
    states = _power_cut_states(base, io, k)
    assert len(states) >= 2 * k
    for name, content, synced_writes in states:
        path.write_bytes(content)
        seen: list[np.ndarray] = []
        rebuilt = _ledger(workload)

        def apply(
            batch: np.ndarray, clock: int, rebuilt: Ledger = rebuilt, seen: list[np.ndarray] = seen
        ) -> np.ndarray:
            seen.append(batch)
            return rebuilt.apply(batch)

        recover(path, apply, lambda e: None)  # a power cut never leaves damage before the tail
        must = sum(1 for w in covered if w <= synced_writes)
        assert len(seen) >= must, f"{name}: {len(seen)} batches recovered, {must} were fsynced"
        assert len(seen) <= len(written)
        for got, want in zip(seen, written, strict=False):  # nothing invented, nothing reordered
            assert np.array_equal(got, want), name
        assert rebuilt.audit().ok
    print(f"[power-cut] {fsync}: {len(states)} states after the last {k} writes checked")


def test_file_size_limit_in_a_real_server_process(tmp_path: Path) -> None:
    """The kernel's own fault (RLIMIT_FSIZE: a short write, then EFBIG) in a ``serve`` process:
    nothing unwritten is acknowledged, the server exits, a restart recovers every acknowledged
    transfer."""
    journal = tmp_path / "j"
    config = WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED, invalid_fraction=0, duplicate_fraction=0)
    workload = Workload(config)
    serve = [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--accounts", str(TEST_ACCOUNTS)]
    serve += ["--seed", str(TEST_SEED), "--journal", str(journal)]
    # The limit is set in the child before it execs the server (no preexec_fn in a threaded
    # parent); Python ignores SIGXFSZ, so a write past it fails with EFBIG instead of a kill.
    limit = f"import os, resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({64 * 1024}, {64 * 1024})); "
    limit += f"os.execv({sys.executable!r}, {serve!r})"
    proc = subprocess.Popen([sys.executable, "-c", limit], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    acked: list[np.ndarray] = []
    error: Error | None = None
    with Client("127.0.0.1", int(line.rsplit(":", 1)[1]), operator=0) as c:
        for i in range(40):  # ~5 KB per entry: the limit is reached within these
            b = workload.batch(100, first_id=i * 100)
            c.submit(b)
            msg = c.recv()
            if type(msg) is Error:
                error = msg
                break
            assert type(msg) is Results
            acked.append(b)
    _, err = proc.communicate(timeout=30)
    assert error is not None and error.code == ErrorCode.JOURNAL_FAILED, error
    assert "File too large" in error.message and proc.returncode == 1, err
    assert 0 < len(acked) < 40

    with ServerThread(ServerConfig(port=0, accounts=TEST_ACCOUNTS, seed=TEST_SEED, journal=str(journal))) as st:
        assert st.server.recovery is not None  # a short write before the EFBIG is cut as the tail
        with connect(st) as c:
            for b in acked:
                assert (c.transfer(b) == ResultCode.DUPLICATE).all()
            assert c.audit().ok
