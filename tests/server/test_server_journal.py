"""The server's journal: acknowledged state survives a restart, mismatches and failures are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.codes import ResultCode
from engine.hooks.audit_chain import AuditChain, AuditChainConfig, verify_chain
from engine.hooks.base import Hook
from engine.hooks.surveillance_log import LOG_DTYPE, SurveillanceLog, SurveillanceLogConfig
from engine.ledger import FLAG_BLACKLISTED, FLAG_FROZEN
from engine.server import ServerThread
from engine.wire import Error, ErrorCode, Results
from loadgen.generator.workload import Workload
from tests.support.hooks import blacklist_hook, freeze_hook
from tests.support.servers import StartServer, connect


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
    assert stats["journal"]["entries"] == 1 + 6 + 4  # header, batches (one per Submit here), admin ops
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


def test_failed_journal_write_acknowledges_nothing(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    st = _run(start_server, tmp_path / "j", workload)
    c = connect(st)
    c.transfer(workload.batch(10, first_id=0))

    def break_disk() -> None:
        journal = st.server.journal
        assert journal is not None

        def fail(*_: object) -> None:
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
