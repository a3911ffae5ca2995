"""The journal: exact recovery, torn and corrupt tails, divergence detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.codes import ResultCode
from engine.journal import MAGIC, AdminEntry, FsyncPolicy, Journal, JournalMismatch, recover
from engine.ledger import FLAG_FROZEN, Ledger
from loadgen.generator.workload import BatchPool, Workload, WorkloadConfig


def build(workload: Workload) -> Ledger:
    balance, wallet_class = workload.initial_state()
    return Ledger(len(balance), balance_fen=balance, wallet_class=wallet_class)


def admin(ledger: Ledger):  # type: ignore[no-untyped-def]
    def apply(entry: AdminEntry) -> None:
        assert entry.op == "freeze"
        ledger.flags[entry.accounts] |= FLAG_FROZEN

    return apply


def write_run(path: Path, seed: int, batches: int = 20, fsync: str = "off") -> tuple[Ledger, Workload, np.ndarray]:
    workload = Workload(WorkloadConfig(accounts=5_000, seed=seed))
    ledger = build(workload)
    journal = Journal(path, fsync)
    stream = BatchPool(workload, 4, 500)
    for i in range(batches):
        b = stream.next()
        journal.append_batch(b, ledger.apply(b))
        if i == 5:
            journal.append_admin(AdminEntry("freeze", [1, 2]))
            ledger.flags[[1, 2]] |= FLAG_FROZEN
    journal.close()
    return ledger, workload, b.copy()


def test_recovery_rebuilds_exactly_what_was_acknowledged(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "j"
    original, workload, last = write_run(path, seed)
    rebuilt = build(workload)
    rec = recover(path, rebuilt.apply, admin(rebuilt))
    assert (rec.batches, rec.transfers, rec.admin_ops, rec.truncated_bytes) == (20, 10_000, 1, 0)
    assert np.array_equal(rebuilt.balance, original.balance)
    assert np.array_equal(rebuilt.flags, original.flags)
    assert np.array_equal(rebuilt.ids.high, original.ids.high)
    # The idempotency state came back too: re-sending the last batch moves no money.
    assert (rebuilt.apply(last) == ResultCode.DUPLICATE).all()
    assert np.array_equal(rebuilt.balance, original.balance)


@pytest.mark.parametrize("cut", [1, 7, 100, 24_000])
def test_torn_tail_is_truncated_and_reported(tmp_path: Path, seed: int, cut: int) -> None:
    path = tmp_path / "j"
    write_run(path, seed, batches=3)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - cut])
    workload = Workload(WorkloadConfig(accounts=5_000, seed=seed))
    rebuilt = build(workload)
    rec = recover(path, rebuilt.apply, admin(rebuilt))
    assert rec.batches == 2 and rec.truncated_bytes > 0
    assert "torn" in rec.message
    assert path.stat().st_size == size - cut - rec.truncated_bytes
    assert rebuilt.audit().ok
    # The truncated journal now replays cleanly and accepts new entries after the good ones.
    again = build(workload)
    rec2 = recover(path, again.apply, admin(again))
    assert rec2.truncated_bytes == 0 and rec2.batches == 2
    journal = Journal(path, "batch", entries=rec2.entries)
    journal.append_admin(AdminEntry("freeze", [3]))
    journal.close()
    assert recover(path, build(workload).apply, lambda e: None).admin_ops == 1


def test_flipped_byte_stops_replay_there(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "j"
    write_run(path, seed, batches=4)
    data = bytearray(path.read_bytes())
    entry = 8 + 17 + 500 * 49  # first byte of the second entry
    data[entry + 17 + 100] ^= 0x40  # inside the second entry's payload
    path.write_bytes(bytes(data))
    rebuilt = build(Workload(WorkloadConfig(accounts=5_000, seed=seed)))
    rec = recover(path, rebuilt.apply, admin(rebuilt))
    assert rec.batches == 1
    assert "checksum" in rec.message


def test_replay_against_another_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    write_run(path, 1, batches=3)
    other = build(Workload(WorkloadConfig(accounts=5_000, seed=2)))
    with pytest.raises(JournalMismatch, match="differ from the run"):
        recover(path, other.apply, admin(other))


def test_not_a_journal_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello world, not a journal")
    with pytest.raises(ValueError, match="not a cbdc-bench journal"):
        recover(path, lambda b: b, lambda e: None)
    assert path.read_bytes() == b"hello world, not a journal"


def test_new_journal_starts_with_magic(tmp_path: Path) -> None:
    Journal(tmp_path / "j").close()
    assert (tmp_path / "j").read_bytes() == MAGIC


@pytest.mark.parametrize(("text", "mode"), [("batch", "batch"), ("off", "off"), ("interval:5", "interval")])
def test_fsync_policy_parses(text: str, mode: str) -> None:
    assert FsyncPolicy.parse(text).mode == mode
    assert str(FsyncPolicy.parse(text)) == text


@pytest.mark.parametrize("text", ["always", "interval:", "interval:-3", "interval:x"])
def test_bad_fsync_policy_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="fsync policy"):
        FsyncPolicy.parse(text)
