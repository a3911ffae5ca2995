"""The server's journal: acknowledged state survives a restart, mismatches and failures are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from engine.codes import ResultCode
from engine.hooks.audit_chain import AuditChain, AuditChainConfig, verify_chain
from engine.hooks.base import Hook
from engine.hooks.surveillance_log import LOG_DTYPE, SurveillanceLog, SurveillanceLogConfig
from engine.journal import ENTRY_MARKER, MAGIC, MAGIC_V1, JournalDamaged, JournalLocked, create
from engine.ledger import FLAG_BLACKLISTED, FLAG_FROZEN
from engine.population import POPULATION_VERSION
from engine.server import Server, ServerConfig, ServerThread, build_ledger
from engine.wire import Error, ErrorCode, Results
from loadgen.generator.workload import Workload
from tests.support.hooks import blacklist_hook, freeze_hook
from tests.support.oracle import v1_entry
from tests.support.servers import TEST_ACCOUNTS, TEST_SEED, StartServer, connect


def _state(st: ServerThread) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def snap() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ledger = st.server.ledger
        assert ledger is not None
        return ledger.balance.copy(), ledger.flags.copy(), ledger.ids.high.copy()

    return st.call(snap)  # type: ignore[no-any-return]


def _run(start_server: StartServer, journal: Path, workload: Workload, **kw: object) -> ServerThread:
    return start_server(hooks=[freeze_hook(), blacklist_hook()], journal=str(journal), max_wait_us=1000, **kw)


def test_restart_rebuilds_balances_ids_and_hook_state(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    st = _run(start_server, journal, workload)
    sent = []
    with connect(st, operator=3) as c:
        for i in range(6):
            b = workload.batch(300, first_id=i * 300, operator=3)
            sent.append(b)
            c.transfer(b)
            if i == 2:
                c.freeze(int(b["payer"][0]))
                c.blacklist_add(int(b["payee"][0]))
        c.unfreeze(int(sent[0]["payer"][0]))
        c.freeze(int(sent[1]["payer"][1]))
        stats = c.stats()
    # Header, batches (one per Submit here), admin ops, and a SYNC entry after each of those fsyncs.
    assert stats["journal"]["entries"] == 1 + (6 + 4) * 2
    before = _state(st)
    st.stop()

    again = _run(start_server, journal, workload)
    after = _state(again)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a, b)
    assert after[1][int(sent[1]["payer"][1])] & FLAG_FROZEN
    assert after[1][int(sent[2]["payee"][0])] & FLAG_BLACKLISTED
    with connect(again, operator=3) as c:
        assert c.welcome is not None and c.welcome.next_transfer_id == int(before[2][3]) + 1
        rec = c.stats()["recovery"]
        assert (rec["batches"], rec["admin_ops"], rec["truncated_bytes"]) == (6, 4, 0)
        # Every transfer that was applied is a duplicate now: nothing applies twice.
        for b in sent:
            codes = c.transfer(b)
            assert set(codes.tolist()) <= {
                ResultCode.DUPLICATE,
                ResultCode.STALE_ID,
                ResultCode.INVALID_AMOUNT,
                ResultCode.UNKNOWN_ACCOUNT,
                ResultCode.SAME_ACCOUNT,
            }
        assert c.audit().ok
    assert np.array_equal(_state(again)[0], before[0])


def test_torn_tail_is_truncated_and_reported(start_server: StartServer, workload: Workload, tmp_path: Path) -> None:
    journal = tmp_path / "j"
    st = _run(start_server, journal, workload)
    with connect(st) as c:
        c.transfer(workload.batch(200, first_id=0))
    before = _state(st)
    st.stop()
    with journal.open("ab") as f:  # a crash in the middle of writing the next entry
        f.write(b"\x10\x27\x00\x00\x01partial")
    again = _run(start_server, journal, workload)
    assert np.array_equal(_state(again)[0], before[0])
    with connect(again) as c:
        rec = c.stats()["recovery"]
    assert rec["truncated_bytes"] == 12 and "torn" in rec["message"]


@pytest.mark.parametrize("change", [{"seed": 99}, {"accounts": 30_000}, {"operators": 8}])
def test_journal_of_another_ledger_is_refused(
    start_server: StartServer, workload: Workload, tmp_path: Path, change: dict[str, int]
) -> None:
    journal = tmp_path / "j"
    st = _run(start_server, journal, workload)
    with connect(st) as c:
        c.transfer(workload.batch(50, first_id=0))
    st.stop()
    size = journal.stat().st_size
    with pytest.raises(ValueError, match="built differently"):
        _run(start_server, journal, workload, **change)
    assert journal.stat().st_size == size  # untouched


@pytest.mark.parametrize("recorded", [POPULATION_VERSION - 1, 0], ids=["older-population", "unrecorded"])
def test_serve_refuses_a_journal_of_another_population_by_name(tmp_path: Path, recorded: int) -> None:
    """Issue 16: the journal names its population; another one refuses the start, saying what to do."""
    journal = tmp_path / "j"
    config = ServerConfig(port=0, accounts=TEST_ACCOUNTS, seed=TEST_SEED, journal=str(journal))
    create(journal, msgspec.structs.replace(config.journal_header(), population_version=recorded))
    before = journal.read_bytes()
    cmd = [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--accounts", str(TEST_ACCOUNTS)]
    cmd += ["--seed", str(TEST_SEED), "--journal", str(journal)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "listening" not in done.stdout
    said = " ".join(done.stderr.split())
    recorded_part = "records no population version" if recorded == 0 else f"population version {recorded};"
    assert f"journal {journal}" in said and recorded_part in said, said
    assert f"builds population version {POPULATION_VERSION}" in said and "--journal a new path" in said
    assert journal.read_bytes() == before  # nothing replayed, nothing written


def test_failed_journal_write_acknowledges_nothing(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    st = _run(start_server, tmp_path / "j", workload)
    c = connect(st)
    c.transfer(workload.batch(10, first_id=0))

    def break_disk() -> None:
        journal = st.server.journal
        assert journal is not None

        def fail(*_: object, **__: object) -> None:
            raise OSError(28, "No space left on device")

        journal.append_batch = fail  # type: ignore[method-assign]

    st.call(break_disk)
    c.submit(workload.batch(10, first_id=10))
    msg = c.recv()
    assert type(msg) is Error and msg.code == ErrorCode.JOURNAL_FAILED, msg
    assert "No space left" in msg.message
    with pytest.raises(ConnectionError):
        while True:
            assert type(c.recv()) is not Results
    c.close()
    assert st.call(lambda: st.server.failed is not None and st.server.failed.done())


def _file_hooks(tmp_path: Path) -> list[Hook]:
    return [
        SurveillanceLog(SurveillanceLogConfig(mode="buffer", path=str(tmp_path / "trove.log"))),
        AuditChain(AuditChainConfig(path=str(tmp_path / "chain.bin"))),
    ]


def test_restart_regenerates_hook_output_files_from_the_journal(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    st = start_server(hooks=_file_hooks(tmp_path), journal=str(journal))
    with connect(st, operator=2) as c:
        for i in range(5):
            c.transfer(workload.batch(200, first_id=i * 200, operator=2))
    # Read on the server's loop: the last batch's deferred observe (which moves the chain's head) runs
    # in the same loop callback that wrote its reply, so the client can see the reply first.
    head = st.call(lambda: st.server.ledger.hooks[1].head.hex())  # type: ignore[union-attr]
    st.stop()
    trove, chain = (tmp_path / "trove.log").read_bytes(), (tmp_path / "chain.bin").read_bytes()
    assert len(trove) == 1_000 * LOG_DTYPE.itemsize

    for restart in (1, 2):  # an audit chain file used to make a journalled server unable to restart
        st = start_server(hooks=_file_hooks(tmp_path), journal=str(journal))
        assert st.server.recovery is not None and st.server.recovery.batches == 5
        st.stop()
        assert (tmp_path / "trove.log").read_bytes() == trove  # regenerated, not appended twice
        assert (tmp_path / "chain.bin").read_bytes() == chain
        aside = tmp_path / ("chain.bin.before-recovery" + ("" if restart == 1 else ".2"))
        assert aside.read_bytes() == chain
    report = verify_chain(tmp_path / "chain.bin", expect_head=head)
    assert report.ok and report.batches == 5, report


def test_second_server_on_the_same_journal_refuses_naming_the_holder(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    _run(start_server, journal, workload)
    with pytest.raises(JournalLocked, match=f"in use by another server \\(pid {os.getpid()}"):
        Server(ServerConfig(port=0, accounts=TEST_ACCOUNTS, seed=TEST_SEED, journal=str(journal)))


def _damaged_journal(start_server: StartServer, workload: Workload, tmp_path: Path) -> tuple[Path, int]:
    """A journal of 6 acknowledged Submits with a byte flipped inside the third batch entry."""
    journal = tmp_path / "j"
    st = _run(start_server, journal, workload)
    with connect(st) as c:
        for i in range(6):
            c.transfer(workload.batch(200, first_id=i * 200))
    st.stop()
    data = bytearray(journal.read_bytes())
    at = data.index(ENTRY_MARKER, len(data) // 2)
    while data[at + 8] != 1:  # a batch entry (kind 1), not a SYNC entry
        at = data.index(ENTRY_MARKER, at + 1)
    data[at + 200] ^= 0x10
    journal.write_bytes(bytes(data))
    return journal, at


def test_damaged_journal_refuses_to_start_until_the_operator_repairs_it(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    journal, at = _damaged_journal(start_server, workload, tmp_path)
    before = journal.read_bytes()
    with pytest.raises(JournalDamaged, match=f"damage at byte {at}"):
        _run(start_server, journal, workload)
    assert journal.read_bytes() == before  # refused untouched
    st = _run(start_server, journal, workload, repair="truncate")
    assert st.server.recovery is not None and st.server.recovery.truncated_bytes == len(before) - at
    assert "REPAIR truncate" in st.server.recovery.message and st.server.recovery.dropped_seqs
    with connect(st) as c:
        assert c.audit().ok


def test_serve_command_refuses_a_damaged_journal_and_does_not_listen(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    journal, at = _damaged_journal(start_server, workload, tmp_path)
    cmd = [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--accounts", str(TEST_ACCOUNTS)]
    cmd += ["--seed", str(TEST_SEED), "--journal", str(journal)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "listening" not in done.stdout
    assert f"damage at byte {at}" in done.stderr and "--repair truncate" in done.stderr


def test_format_1_journal_is_replayed_upgraded_and_continued(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    config = ServerConfig(port=0, accounts=TEST_ACCOUNTS, seed=TEST_SEED, profile="compliance")
    writer = build_ledger(config)
    writer.clock.payments_per_day = 0  # format 1: days from client timestamps
    header = msgspec.structs.replace(config.journal_header(), clock_payments_per_day=0, clock_start_ns=0, precedence="")
    parts = [MAGIC_V1, v1_entry(3, 1, msgspec.msgpack.encode(header))]
    for i in range(3):
        b = workload.batch(200, first_id=i * 200)
        parts.append(v1_entry(1, i + 2, b.tobytes() + writer.apply(b).tobytes()))
    journal = tmp_path / "j"
    journal.write_bytes(b"".join(parts))

    st = start_server(journal=str(journal), profile="compliance")
    notes = " ".join(st.server.startup_notes())
    assert "started by format 1" in notes and "upgraded from format 1" in notes
    assert journal.read_bytes()[:8] == MAGIC and (tmp_path / "j.v1").read_bytes()[:8] == MAGIC_V1
    last = workload.batch(200, first_id=600)
    with connect(st) as c:
        assert np.array_equal(c.transfer(last), writer.apply(last))
    st.stop()
    again = start_server(journal=str(journal), profile="compliance")
    assert again.server.recovery is not None and again.server.recovery.batches == 4
    assert np.array_equal(_state(again)[0], writer.balance)


def test_interval_fsync_syncs_a_quiet_server_by_timer(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    st = _run(start_server, tmp_path / "j", workload, fsync="interval:300")
    with connect(st) as c:
        c.transfer(workload.batch(50, first_id=0))  # may sync on the write path (first interval)
        c.transfer(workload.batch(50, first_id=50))  # within the interval: not synced by its write

        def unsynced() -> int:
            journal = st.server.journal
            assert journal is not None
            return journal.seq - journal.durable_seq  # 1 = only the SYNC entry after the last fsync

        deadline = time.monotonic() + 10
        while unsynced() > 1:  # nothing more is written: only the timer can sync it
            assert time.monotonic() < deadline, "the quiet server never synced its last interval"
            time.sleep(0.02)
