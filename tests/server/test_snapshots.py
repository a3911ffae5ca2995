"""Snapshots, journal segments and recovery from a snapshot plus the journal after it (issue 15).

What must hold: a restart from a snapshot leaves exactly the state (ledger and every hook, arrays
and scalars) the server had; a damaged snapshot (a byte flipped anywhere in it) is refused by name
and recovery falls back to the previous one without losing an acknowledged transfer; a snapshot
child killed while writing leaves no snapshot; a power cut during the writes and renames never
leaves a snapshot that is chosen but wrong; segments are deleted only behind the watermark, so
disk use stays bounded while every restart still finds what it needs.
"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.codes import ResultCode
from engine.hooks.audit_chain import AuditChain, AuditChainConfig, verify_chain
from engine.hooks.base import Hook
from engine.hooks.blacklist import Blacklist
from engine.hooks.freeze import Freeze
from engine.hooks.privacy import Privacy
from engine.hooks.social_credit import SocialCredit
from engine.hooks.wallet_limits import WalletLimits
from engine.journal import segment_files
from engine.server import ServerConfig, ServerThread, build_ledger
from engine.server.recovery import choose_snapshot, open_journal
from engine.server.snapshots import state_owners
from engine.snapshot import (
    PARTIAL,
    SnapshotDamaged,
    SnapshotIO,
    SnapshotSchedule,
    capture,
    list_snapshots,
    verify,
    write_snapshot,
)
from loadgen.generator.workload import Workload
from loadgen.results.run import Durability
from tests.support.servers import TEST_ACCOUNTS, TEST_SEED, StartServer, connect

OPERATOR = 2
State = dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]]


def _options(journal: Path, method: str = "fork", **extra: Any) -> dict[str, Any]:
    """Server options: a journal, a snapshot every 1,000 payments by ``method``."""
    return {"journal": str(journal), "snapshot_every": "1k", "snapshot_method": method, "max_wait_us": 1000} | extra


def _hooks(tmp_path: Path, *, chain: bool = True) -> list[Hook]:
    hooks: list[Hook] = [WalletLimits(), Blacklist(), Freeze(), SocialCredit(), Privacy(key=bytes(range(16)))]
    if chain:
        hooks.append(AuditChain(AuditChainConfig(path=str(tmp_path / "chain.bin"))))
    return hooks


def _state_of(ledger: Any) -> State:
    return {
        name: ({k: a.copy() for k, a in owner.state_arrays().items()}, owner.state_scalars())
        for name, owner in state_owners(ledger)
    }


def _state(st: ServerThread) -> State:
    return st.call(lambda: _state_of(st.server.ledger))  # type: ignore[no-any-return]


def _assert_same(got: State, want: State) -> None:
    assert got.keys() == want.keys()
    for name, (arrays, scalars) in want.items():
        assert got[name][1] == scalars, name
        assert got[name][0].keys() == arrays.keys(), name
        for key, array in arrays.items():
            assert np.array_equal(got[name][0][key], array), f"{name}.{key}"


def _wait_snapshot(st: ServerThread) -> int:
    """Let a running snapshot child finish; returns the snapshots taken so far."""

    def wait() -> int:
        snap = st.server.snapshotter
        assert snap is not None
        snap.poll(wait=True)
        return snap.taken

    return st.call(wait)  # type: ignore[no-any-return]


def _send(st: ServerThread, workload: Workload, batches: range, *, wait: bool = True) -> list[np.ndarray]:
    sent = []
    with connect(st, operator=OPERATOR) as c:
        for i in batches:
            b = workload.batch(300, first_id=i * 300, operator=OPERATOR)
            c.transfer(b)
            sent.append(b)
            if wait:
                _wait_snapshot(st)
    return sent


def _all_in(st: ServerThread, sent: list[np.ndarray]) -> None:
    """Every transfer sent (and acknowledged) is in: resubmitting applies nothing."""
    with connect(st, operator=OPERATOR) as c:
        for b in sent:
            assert not (c.transfer(b) == ResultCode.OK).any()
        assert c.audit().ok


def test_schedule_parses_payments_seconds_both_and_off() -> None:
    assert SnapshotSchedule.parse("5M,600s") == SnapshotSchedule(5_000_000, 600.0)
    assert SnapshotSchedule.parse("2k") == SnapshotSchedule(2_000, 0.0)
    assert SnapshotSchedule.parse("30s").every_s == 30.0
    assert SnapshotSchedule.parse("2m, 300k") == SnapshotSchedule(300_000, 120.0)
    assert not SnapshotSchedule.parse("off").enabled
    for bad in ("", "-3", "5x", "0s", "1.5"):
        with pytest.raises(ValueError, match="snapshot_every"):
            SnapshotSchedule.parse(bad)


@pytest.mark.parametrize("method", ["fork", "thread"])
def test_restart_from_a_snapshot_restores_ledger_and_every_hook_exactly(
    start_server: StartServer, workload: Workload, tmp_path: Path, method: str
) -> None:
    journal = tmp_path / "j"
    kw = _options(journal, method)
    st = start_server(hooks=_hooks(tmp_path), **kw)
    sent = _send(st, workload, range(8))
    with connect(st, operator=OPERATOR) as c:
        c.freeze(int(sent[0]["payer"][0]))  # an admin entry after the last snapshot
        sent += [workload.batch(300, first_id=8 * 300, operator=OPERATOR)]
        c.transfer(sent[-1])
    assert _wait_snapshot(st) >= 2
    before = _state(st)
    st.stop()

    again = start_server(hooks=_hooks(tmp_path), **kw)
    rec = again.server.recovery
    assert rec is not None and "after the snapshot" in rec.message, rec
    assert rec.batches < len(sent), "replay started from the beginning, not from the snapshot"
    _assert_same(_state(again), before)
    _all_in(again, sent)
    again.stop()
    # The chain file was cut back to the snapshot's length and continued: one chain, every batch
    # (the resubmitted ones too), and its head is the one the restored state carries on from.
    report = verify_chain(tmp_path / "chain.bin")
    assert report.ok and report.batches == 2 * len(sent), report


def test_byte_flips_anywhere_in_a_snapshot_refuse_it_and_fall_back(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    kw = _options(journal)
    st = start_server(hooks=_hooks(tmp_path, chain=False), **kw)
    sent = _send(st, workload, range(9))
    want = _state(st)
    st.stop()
    (older_seq, older), (newest_seq, newest) = list_snapshots(tmp_path / "j.snapshots")[1::-1]
    assert older_seq < newest_seq
    config = ServerConfig(port=0, accounts=TEST_ACCOUNTS, seed=TEST_SEED, **kw)
    original = newest.read_bytes()
    positions = sorted({0, 7, len(original) - 1, *np.linspace(0, len(original) - 1, 60).astype(int).tolist()})
    assert len(positions) >= 50
    for pos in positions:
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        newest.write_bytes(damaged)
        with pytest.raises(SnapshotDamaged, match=newest.name):
            verify(newest)
        choice = choose_snapshot(config)
        assert choice.path == older, f"byte {pos}: chose {choice.path}"
        assert any(newest.name in line and "REFUSED" in line for line in choice.refused)
        hooks = _hooks(tmp_path, chain=False)
        for h in hooks:
            h.journalled = h.resuming = True
        ledger = build_ledger(config, hooks, from_snapshot=True)  # every byte of state from the snapshot
        opened = open_journal(config, ledger, snapshot=choice)
        try:
            assert opened.recovery is not None and opened.recovery.batches > 0
            _assert_same(_state_of(ledger), want)  # every acknowledged transfer is back
        finally:
            opened.journal.close()
            opened.lock.release()
    newest.write_bytes(original)
    print(f"[snapshot] {len(positions)} byte flips in a {len(original)}-byte snapshot each refused it")
    again = start_server(hooks=_hooks(tmp_path, chain=False), **kw)
    _all_in(again, sent)


@pytest.mark.parametrize("method", ["fork", "thread"])
def test_segments_are_retired_behind_the_watermark_and_disk_stays_bounded(
    start_server: StartServer, workload: Workload, tmp_path: Path, method: str
) -> None:
    journal = tmp_path / "j"
    kw = _options(journal, method, journal_segment_bytes=1 << 16)
    st = start_server(hooks=_hooks(tmp_path), **kw)
    sent = _send(st, workload, range(30))
    stats = st.call(lambda: st.server.stats())
    j, snaps = stats["journal"], stats["snapshots"]
    assert j["rolls"] >= 4 and j["retired_segments"] >= 2, j
    assert j["disk_bytes"] < j["bytes_written"] / 2, j  # bounded: the old segments are gone
    assert snaps["kept"] == 2 and snaps["watermark_seq"] > 0
    # Kept: the entries right after the watermark and everything later; gone: every segment wholly
    # behind it (the first file keeps only the header).
    water = snaps["watermark_seq"]
    later = segment_files(journal)[1:]
    assert later[0][0] <= water + 1, (later[0], water)
    assert all(nxt - 1 > water for (_, _), (nxt, _) in itertools.pairwise(later))
    assert journal.stat().st_size < 1024
    want = _state(st)
    st.stop()
    again = start_server(hooks=_hooks(tmp_path), **kw)
    assert again.server.recovery is not None and again.server.recovery.batches <= 10
    _assert_same(_state(again), want)
    _all_in(again, sent)


def test_a_snapshot_child_killed_while_writing_leaves_no_snapshot(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    kw = _options(journal, snapshot_every="off")
    st = start_server(hooks=_hooks(tmp_path), **kw)
    sent = _send(st, workload, range(4), wait=False)
    kw["snapshot_every"] = "1k"
    st.stop()
    st = start_server(hooks=_hooks(tmp_path), **kw)

    def kill_child() -> tuple[int, int]:
        snap = st.server.snapshotter
        assert snap is not None
        snap.start()
        assert snap._child is not None
        os.kill(snap._child, signal.SIGKILL)
        snap.poll(wait=True)
        return snap.failed, snap.taken

    assert st.call(kill_child) == (1, 0)
    directory = tmp_path / "j.snapshots"
    assert not list(directory.glob(f"*{PARTIAL}*")) and not list_snapshots(directory)
    sent += _send(st, workload, range(4, 8))
    assert _wait_snapshot(st) >= 1  # the next one is taken
    want = _state(st)
    st.stop()
    again = start_server(hooks=_hooks(tmp_path), **kw)
    _assert_same(_state(again), want)
    _all_in(again, sent)


class RecordingIO(SnapshotIO):
    """Records the snapshot writer's steps: writes to the new file, fsyncs, the rename, the dir fsync."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Any]] = []
        self.offset = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        n = os.write(fd, data)
        self.steps.append(("write", (self.offset, bytes(data[:n]))))
        self.offset += n
        return n

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.steps.append(("fsync", fd))

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)
        self.steps.append(("replace", (src.name, dst.name)))

    def fsync_dir(self, directory: Path) -> None:
        super().fsync_dir(directory)
        self.steps.append(("fsync_dir", None))


def test_power_cut_during_snapshot_writes_and_renames_never_chooses_a_bad_snapshot(
    tmp_path: Path, workload: Workload
) -> None:
    """ALICE-style: from the recorded steps, every file state a power cut could leave (unsynced
    writes dropped or torn, a rename not yet durable); the newest snapshot that verifies is always
    either the complete new one or the previous one. States the protocol rules out (the new name
    over unsynced data) are included too: they must be refused, not restored."""
    config = ServerConfig(port=0, accounts=3_000, seed=TEST_SEED)
    ledger = build_ledger(config, _hooks(tmp_path, chain=False))
    header = config.journal_header()
    d = tmp_path / "snaps"
    d.mkdir()
    previous, _ = write_snapshot(d, 10, header, capture(state_owners(ledger)))
    ledger.apply(workload.batch(500, first_id=0))
    io = RecordingIO()
    new, _ = write_snapshot(d, 20, header, capture(state_owners(ledger)), io=io, chunk_bytes=16384)
    complete = new.read_bytes()
    new.unlink()
    partial = f"{new.name}{PARTIAL}-{os.getpid()}"
    steps = io.steps
    file_synced = next(i for i, (k, _) in enumerate(steps) if k == "fsync")
    states = 0
    for cut in range(len(steps) + 1):
        done = steps[:cut]
        writes = [w for k, w in done if k == "write"]
        synced = cut > file_synced
        renamed = any(k == "replace" for k, _ in done)
        variants: list[tuple[str, bytes]] = []
        if synced:
            variants.append(("all", complete))
        else:
            for keep in {0, len(writes) // 2, len(writes)}:
                content = bytearray()
                for off, data in writes[:keep]:
                    content[off : off + len(data)] = data
                variants.append((f"{keep} writes", bytes(content)))
                if keep:
                    variants.append(
                        (f"{keep} writes, last torn", bytes(content[: -max(1, len(writes[keep - 1][1]) // 2)]))
                    )
        names = (
            [new.name, partial]
            if renamed and not any(k == "fsync_dir" for k, _ in done)
            else [new.name if renamed else partial]
        )
        for what, content in variants:
            for name in [*names, new.name]:  # the last: the new name over whatever reached the disk
                for p in d.iterdir():
                    if p != previous:
                        p.unlink()
                (d / name).write_bytes(content)
                chosen = None
                for _, path in list_snapshots(d):
                    try:
                        verify(path)
                    except SnapshotDamaged:
                        continue
                    chosen = path
                    break
                assert chosen in (previous, new), f"cut after step {cut} ({what}, {name}): chose {chosen}"
                if chosen == new:
                    assert (d / new.name).read_bytes() == complete, f"cut after step {cut} ({what})"
                states += 1
    assert states > 2 * len(steps)
    print(f"[power-cut] {states} snapshot file states after {len(steps)} recorded steps checked")


def test_result_files_carry_the_snapshots_and_the_longest_stall() -> None:
    start = {"journal": {"fsync": "batch"}, "snapshots": {"taken": 2, "stall_ms_max": 1.0}}
    end = {"journal": {"fsync": "batch"}, "snapshots": {"taken": 5, "stall_ms_max": 3.5, "step_ms_max": 4.25}}
    d = Durability.of(start, end, 10.0)
    assert (d.snapshots, d.snapshot_stall_ms_max) == (3, 4.25)
    assert Durability.of({}, {"journal": {"fsync": "off"}}, 1.0).snapshots == 0
