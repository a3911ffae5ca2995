"""The journal: exact recovery, torn tails cut, damage before the tail refused, format 1 replayed."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest

from engine.codes import PRECEDENCE_ID, ResultCode
from engine.journal import (
    KIND_SNAPSHOT,
    KIND_WATERMARK,
    MAGIC,
    MAGIC_V1,
    AdminEntry,
    FsyncPolicy,
    Journal,
    JournalDamaged,
    JournalFailed,
    JournalHeader,
    JournalLock,
    JournalLocked,
    JournalMismatch,
    OsIO,
    create,
    recover,
    upgrade_v1,
)
from engine.ledger import FLAG_FROZEN, Ledger
from engine.population import POPULATION_VERSION, Population
from engine.server.config import ServerConfig
from loadgen.generator.workload import BatchPool, Workload, WorkloadConfig
from tests.support.oracle import v1_entry

HEADER = JournalHeader(accounts=5_000, seed=0, operators=64, profile="baseline")


def build(workload: Workload) -> Ledger:
    balance, wallet_class = workload.initial_state()
    return Ledger(len(balance), balance_fen=balance, wallet_class=wallet_class)


def admin(ledger: Ledger):  # type: ignore[no-untyped-def]
    def apply(entry: AdminEntry) -> None:
        assert entry.op == "freeze"
        ledger.flags[entry.accounts] |= FLAG_FROZEN

    return apply


def replayer(ledger: Ledger, seen: list[np.ndarray] | None = None):  # type: ignore[no-untyped-def]
    def apply(batch: np.ndarray, clock: int) -> np.ndarray:
        assert clock == ledger.clock.payments
        if seen is not None:
            seen.append(batch)
        return ledger.apply(batch)

    return apply


def write_run(path: Path, seed: int, batches: int = 20, fsync: str = "batch") -> tuple[Ledger, Workload, np.ndarray]:
    workload = Workload(WorkloadConfig(accounts=5_000, seed=seed))
    ledger = build(workload)
    create(path, HEADER)
    journal = Journal(path, fsync)
    stream = BatchPool(workload, 4, 500)
    for i in range(batches):
        b = stream.next()
        clock = ledger.clock.payments
        journal.append_batch(b, ledger.apply(b), clock)
        if i == 5:
            journal.append_admin(AdminEntry("freeze", [1, 2]))
            ledger.flags[[1, 2]] |= FLAG_FROZEN
    journal.close()
    return ledger, workload, b.copy()


def test_recovery_rebuilds_exactly_what_was_acknowledged(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "j"
    original, workload, last = write_run(path, seed)
    rebuilt = build(workload)
    rec = recover(path, replayer(rebuilt), admin(rebuilt))
    assert (rec.batches, rec.transfers, rec.admin_ops, rec.truncated_bytes) == (20, 10_000, 1, 0)
    assert rec.header == HEADER and rec.version == 2
    assert np.array_equal(rebuilt.balance, original.balance)
    assert np.array_equal(rebuilt.flags, original.flags)
    assert np.array_equal(rebuilt.ids.high, original.ids.high)
    assert rebuilt.clock.payments == original.clock.payments > 0
    # The idempotency state came back too: re-sending the last batch moves no money.
    assert (rebuilt.apply(last) == ResultCode.DUPLICATE).all()
    assert np.array_equal(rebuilt.balance, original.balance)


@pytest.mark.parametrize("cut", [1, 7, 30, 24_000])
def test_torn_tail_is_cut_and_reported(tmp_path: Path, seed: int, cut: int) -> None:
    path = tmp_path / "j"
    _, workload, _ = write_run(path, seed, batches=3, fsync="off")  # off: only the header is durable
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - cut])
    rebuilt = build(workload)
    rec = recover(path, replayer(rebuilt), admin(rebuilt))
    assert rec.truncated_bytes > 0 and "torn" in rec.message and "tail" in rec.message
    assert path.stat().st_size == size - cut - rec.truncated_bytes
    assert rebuilt.audit().ok
    # The cut journal replays cleanly and takes new entries after the good ones.
    again = build(workload)
    rec2 = recover(path, replayer(again), admin(again))
    assert rec2.truncated_bytes == 0 and rec2.batches == rec.batches
    journal = Journal(path, "batch", entries=rec2.entries)
    journal.append_admin(AdminEntry("freeze", [3]))
    journal.close()
    assert recover(path, replayer(build(workload)), lambda e: None).admin_ops == rec.admin_ops + 1


def _entry_offsets(data: bytes) -> list[int]:
    out, pos = [], len(MAGIC)
    while pos < len(data):
        out.append(pos)
        pos += 28 + struct.unpack_from("<I", data, pos + 4)[0]
    return out


def test_damage_before_the_tail_refuses_naming_where_and_what_follows(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "j"
    _, workload, _ = write_run(path, seed, batches=6)
    data = bytearray(path.read_bytes())
    offsets = _entry_offsets(bytes(data))
    third = offsets[5]  # entries: header, batch, sync, batch, sync, [batch 3], sync, ...
    data[third + 28 + 100] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(JournalDamaged) as info:
        recover(path, replayer(build(workload)), admin(build(workload)))
    message = str(info.value)
    assert str(path) in message and f"damage at byte {third}" in message
    assert "last good entry is seq 5" in message
    follow = len(offsets) - 6
    assert f"{follow} intact entries follow the damage (seq 7..{6 + follow})" in message
    assert "--repair truncate" in message
    assert path.read_bytes() == bytes(data)  # untouched

    # The operator decides to drop it: everything from the damage, said exactly.
    logged: list[str] = []
    rebuilt = build(workload)
    rec = recover(path, replayer(rebuilt), admin(rebuilt), repair="truncate", log=logged.append)
    assert rec.batches == 2 and rec.truncated_bytes == len(data) - third
    assert rec.dropped_seqs == tuple(range(7, 7 + follow))
    assert logged == [rec.message] and "REPAIR truncate" in rec.message and f"from byte {third}" in rec.message
    assert path.stat().st_size == third


def test_damaged_header_refuses_instead_of_cutting_everything(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "j"
    _, workload, _ = write_run(path, seed, batches=2)
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 30] ^= 1  # inside the header entry's payload
    path.write_bytes(bytes(data))
    with pytest.raises(JournalDamaged, match="there is no good entry before it"):
        recover(path, replayer(build(workload)), admin(build(workload)))
    assert path.read_bytes() == bytes(data)


def test_flipped_bytes_refuse_or_cut_only_the_tail(tmp_path: Path, seed: int) -> None:
    """A byte flipped at 64 positions across a journal: every one refuses with the message, or
    (in the tail only) recovers with every acknowledged batch (under ``batch``, all of them)."""
    rng = np.random.default_rng(seed)
    clean = tmp_path / "clean"
    original, workload, _ = write_run(clean, seed, batches=8)
    data = clean.read_bytes()
    positions = sorted({*np.linspace(0, len(data) - 1, 48).astype(int).tolist(), *rng.integers(0, len(data), 16)})
    positions += [len(data) - 1, len(data) - 20]  # inside the last SYNC entry: the only tail there is
    refused = recovered = 0
    for pos in positions:
        path = tmp_path / "j"
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(damaged))
        rebuilt = build(workload)
        try:
            rec = recover(path, replayer(rebuilt), admin(rebuilt))
        except JournalDamaged as exc:
            assert str(path) in str(exc) and "damage at byte" in str(exc) and "intact entries follow" in str(exc)
            assert path.read_bytes() == bytes(damaged), "a refused journal must be left untouched"
            refused += 1
            continue
        except ValueError as exc:  # the file magic itself
            assert pos < len(MAGIC) and "not a cbdc-bench journal" in str(exc)
            refused += 1
            continue
        assert rec.batches == 8, f"flip at {pos} lost acknowledged batches: {rec.message}"
        assert np.array_equal(rebuilt.balance, original.balance)
        recovered += 1
    print(f"[flip] {len(positions)} positions: {refused} refused, {recovered} recovered (tail)")
    assert len(positions) >= 50 and refused > 40 and recovered >= 1


def test_replay_against_another_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    write_run(path, 1, batches=3)
    other = build(Workload(WorkloadConfig(accounts=5_000, seed=2)))
    with pytest.raises(JournalMismatch, match="differ from the run"):
        recover(path, lambda b, c: other.apply(b), admin(other))


def test_not_a_journal_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello world, not a journal")
    with pytest.raises(ValueError, match="not a cbdc-bench journal"):
        recover(path, lambda b, c: b, lambda e: None)
    assert path.read_bytes() == b"hello world, not a journal"


def test_format_1_journal_replays_and_is_upgraded(tmp_path: Path, seed: int) -> None:
    """A journal written by format 1 (days from timestamps) replays exactly and becomes format 2."""
    workload = Workload(WorkloadConfig(accounts=5_000, seed=seed))
    writer = build(workload)
    writer.clock.payments_per_day = 0  # format 1's rule
    parts = [MAGIC_V1, v1_entry(3, 1, msgspec.msgpack.encode(HEADER))]
    stream = BatchPool(workload, 2, 300)
    for seq in range(2, 6):
        b = stream.next()
        parts.append(v1_entry(1, seq, b.tobytes() + writer.apply(b).tobytes()))
    path = tmp_path / "j"
    path.write_bytes(b"".join(parts) + b"\x05\x00")  # and a torn last write
    rebuilt = build(workload)
    rebuilt.clock.payments_per_day = 0
    clocks: list[int] = []

    def apply(batch: np.ndarray, clock: int) -> np.ndarray:
        clocks.append(clock)
        return rebuilt.apply(batch)

    rec = recover(path, apply, lambda e: None)
    assert clocks == [-1] * 4  # format 1 records no clock
    assert (rec.version, rec.batches, rec.truncated_bytes) == (1, 4, 2)
    assert np.array_equal(rebuilt.balance, writer.balance)
    last = upgrade_v1(path)
    assert path.read_bytes()[:8] == MAGIC and (tmp_path / "j.v1").read_bytes()[:8] == MAGIC_V1
    again = build(workload)
    again.clock.payments_per_day = 0
    rec2 = recover(path, replayer(again), lambda e: None)
    assert (rec2.version, rec2.batches, rec2.entries, rec2.truncated_bytes) == (2, 4, last, 0)
    assert rec2.header is not None and rec2.header.clock_payments_per_day == 0
    assert np.array_equal(again.balance, writer.balance)


def test_second_lock_refuses_naming_the_holder(tmp_path: Path) -> None:
    first = JournalLock(tmp_path / "j")
    with pytest.raises(JournalLocked, match=f"pid {os.getpid()}"):
        JournalLock(tmp_path / "j")
    first.release()
    JournalLock(tmp_path / "j").release()  # free again once released


def test_create_fsyncs_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    create(tmp_path / "j", HEADER)
    assert synced == [False, True]  # the file, then its directory (the rename)
    assert (tmp_path / "j").read_bytes()[:8] == MAGIC


def test_interval_timer_syncs_a_quiet_journal(tmp_path: Path) -> None:
    path = tmp_path / "j"
    create(path, HEADER)
    journal = Journal(path, "interval:50")
    timers: list[tuple[float, object]] = []

    class Handle:
        def cancel(self) -> None:
            pass

    def call_later(delay: float, fn: object) -> Handle:
        timers.append((delay, fn))
        return Handle()

    journal.start_timer(call_later, lambda exc: None)
    journal.append_admin(AdminEntry("freeze", [1]))
    assert journal.durable_seq == 1 and len(timers) == 1 and timers[0][0] == pytest.approx(0.05)
    journal.append_admin(AdminEntry("freeze", [2]))
    assert len(timers) == 1  # one pending timer covers both
    timers[0][1]()  # type: ignore[operator]  # the loop fires it: nothing else was written
    assert journal.durable_seq == 3 and journal.fsyncs == 1
    journal.close()


class GatedFsync(OsIO):
    """Each fsync waits for a permit (``release``; at most 10 s); all fail with EIO once ``fail`` is set."""

    def __init__(self, permits: int = 0) -> None:
        self.permits = threading.Semaphore(permits)
        self.running = threading.Event()
        self.fail = False
        self.threads: list[str] = []

    def fsync(self, fd: int) -> None:
        self.threads.append(threading.current_thread().name)
        self.running.set()
        self.permits.acquire(timeout=10)
        if self.fail:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fsync(fd)


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_interval_fsync_runs_off_the_loop_and_records_what_it_covered(tmp_path: Path) -> None:
    path = tmp_path / "j"
    create(path, HEADER)
    io = GatedFsync()
    journal = Journal(path, "interval:1", io=io)
    failures: list[OSError] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        journal.start_timer(loop.call_later, failures.append, loop=loop)
        time.sleep(0.005)  # the interval has passed: the next append starts an fsync
        journal.append_admin(AdminEntry("freeze", [1]))  # entry 2
        assert io.running.wait(5)
        # The fsync is blocked on its thread; the loop goes on appending meanwhile.
        journal.append_admin(AdminEntry("freeze", [2]))
        journal.append_admin(AdminEntry("freeze", [3]))
        assert journal.durable_seq == 1 and journal.fsyncs == 0
        io.permits.release()
        await _until(lambda: journal.durable_seq >= 2)
        # What was written before it started (entry 2), not after; its SYNC entry is entry 5.
        assert journal.durable_seq == 2 and journal.fsyncs == 1
        # Entries 3 to 5 came after it started: its completion (or the timer) starts the next.
        io.permits.release()
        await _until(lambda: journal.durable_seq >= 5)
        assert journal.durable_seq == 5 and journal.fsyncs == 2

    asyncio.run(main())
    journal.close()
    assert failures == [] and journal.fsyncs >= 2
    assert all(name.startswith("journal-fsync") for name in io.threads)
    rec = recover(path, lambda b, c: b, lambda e: None)
    assert rec.admin_ops == 3 and rec.truncated_bytes == 0 and rec.durable_seq >= 5


def test_a_failed_background_fsync_stops_the_journal_and_is_not_retried(tmp_path: Path) -> None:
    path = tmp_path / "j"
    create(path, HEADER)
    io = GatedFsync(permits=1)
    io.fail = True
    journal = Journal(path, "interval:1", io=io)
    failures: list[OSError] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        journal.start_timer(loop.call_later, failures.append, loop=loop)
        time.sleep(0.005)
        journal.append_admin(AdminEntry("freeze", [1]))
        await _until(lambda: bool(failures))

    asyncio.run(main())
    assert failures[0].errno == errno.EIO and journal.failed is failures[0]
    with pytest.raises(JournalFailed):
        journal.append_admin(AdminEntry("freeze", [2]))
    journal.close()
    assert len(io.threads) == 1 and journal.durable_seq == 1  # never retried, not even at close


@pytest.mark.parametrize(("text", "mode"), [("batch", "batch"), ("off", "off"), ("interval:5", "interval")])
def test_fsync_policy_parses(text: str, mode: str) -> None:
    assert FsyncPolicy.parse(text).mode == mode
    assert str(FsyncPolicy.parse(text)) == text


def test_fsync_off_says_nothing_is_promised_after_a_power_cut() -> None:
    assert "NOTHING is promised after a power cut" in FsyncPolicy.parse("off").promise()


@pytest.mark.parametrize("text", ["always", "interval:", "interval:-3", "interval:x"])
def test_bad_fsync_policy_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="fsync policy"):
        FsyncPolicy.parse(text)


def test_header_differences_cover_clock_and_precedence_but_not_watermarks() -> None:
    server = msgspec.structs.replace(HEADER, clock_payments_per_day=5_000, clock_start_ns=1, precedence=PRECEDENCE_ID)
    reordered = msgspec.structs.replace(server, precedence="codes-0")
    assert reordered.differences(server) == [f"precedence: journal 'codes-0', this server {PRECEDENCE_ID!r}"]
    assert msgspec.structs.replace(server, clock_payments_per_day=7).differences(server)
    assert not msgspec.structs.replace(server, snapshot_seq=9, trove_seq=4).differences(server)
    # A format 1 header (no clock, no precedence id) replays under the rules it was written with.
    assert not HEADER.differences(server)


def test_reserved_kinds_are_skipped_so_later_issues_need_no_format_change(tmp_path: Path) -> None:
    path = tmp_path / "j"
    create(path, HEADER)
    journal = Journal(path, "batch")
    journal.append_admin(AdminEntry("freeze", [1]))
    journal._write(KIND_WATERMARK, struct.pack("<Q", 2))  # as the trove will write its progress
    journal._write(KIND_SNAPSHOT, b"snapshot location and watermark")
    journal.append_admin(AdminEntry("freeze", [2]))
    journal.close()
    ops: list[AdminEntry] = []
    rec = recover(path, lambda b, c: b, ops.append)
    assert [e.accounts for e in ops] == [[1], [2]] and rec.truncated_bytes == 0


def test_population_refusal_names_the_journal_both_versions_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal replays only into the seeded state it was written on (issue 16)."""
    path = tmp_path / "j"
    server = ServerConfig(accounts=5_000, seed=3).journal_header()
    assert server.population_version == POPULATION_VERSION and len(server.population_sha256) == 64
    assert server.population_refusal(server, path) is None

    older = msgspec.structs.replace(server, population_version=POPULATION_VERSION - 1)
    why = older.population_refusal(server, path)
    assert why is not None and f"journal {path} was written on population version {POPULATION_VERSION - 1}" in why
    assert f"this server builds population version {POPULATION_VERSION}" in why
    assert "give --journal a new path" in why and "Nothing was replayed" in why
    assert older.differences(server)  # a snapshot taken on it is refused too

    # A header from before the fields existed decodes (defaults) and is refused: 1 or 2, unknown.
    fields = {k: v for k, v in msgspec.structs.asdict(server).items() if not k.startswith("population")}
    unrecorded = msgspec.msgpack.decode(msgspec.msgpack.encode(fields), type=JournalHeader)
    why = unrecorded.population_refusal(server, path)
    assert why is not None and "records no population version" in why and str(path) in why

    # Same version, other sampled state: the rule changed without a new version.
    drifted = msgspec.structs.replace(server, population_sha256="0" * 64)
    assert "changed without a new version" in (drifted.population_refusal(server, path) or "")
    # Another seed has another digest; ``differences`` names the seed, not the population.
    other_seed = ServerConfig(accounts=5_000, seed=4).journal_header()
    assert other_seed.population_refusal(server, path) is None and other_seed.differences(server) == [
        "seed: journal 4, this server 3"
    ]

    # The digest sees a change of the starting state that nobody versioned.
    real = Population._initial_of

    def richer(self: Population, accounts: np.ndarray, draws: object) -> tuple[np.ndarray, np.ndarray]:
        fen, bits = real(self, accounts, draws)  # type: ignore[arg-type]
        return fen + 1, bits

    monkeypatch.setattr(Population, "_initial_of", richer)
    assert ServerConfig(accounts=5_000, seed=3).journal_header().population_sha256 != server.population_sha256
