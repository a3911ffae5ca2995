"""Snapshots with the hooks that feed others or rebuild from the journal (issue 15).

* ``realistic`` (risk_model): its rolling features and the batches still waiting for the model
  (observe mode, ``lag_batches``) are snapshot state. A server restarted from a snapshot plus the
  journal after it must reach exactly the state of a whole-journal replay (ledger, features,
  scores, the pending batches, hook outputs) and then answer further traffic identically.
* The trove: when its durable watermark is behind the snapshot (its newest segments lost), the
  journal from its watermark has been kept (the watermark rule) and is replayed into the trove
  only; the ledger replays just the entries after the snapshot.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.codes import ResultCode
from engine.hooks.risk_model import RiskModel
from engine.hooks.social_credit import SocialCredit
from engine.hooks.surveillance_log import SurveillanceLog, SurveillanceLogConfig
from engine.hooks.wallet_limits import WalletLimits
from engine.journal import JournalDamaged, segment_files
from engine.profiles import default_scenario_text
from engine.server import Server, ServerConfig, ServerThread
from engine.snapshot import list_snapshots, read_meta
from engine.trove.config import TroveConfig
from engine.trove.manifest import load_manifest
from loadgen.cli.trove import stats as trove_stats
from loadgen.generator.workload import Workload
from tests.server.test_snapshots import OPERATOR, _assert_same, _state, _wait_snapshot
from tests.server.test_trove_wire import _distinct_rows
from tests.support.servers import TEST_ACCOUNTS, TEST_SEED, StartServer, connect

BATCH = 300


def _batches(workload: Workload, first: int, count: int) -> list[np.ndarray]:
    return [workload.batch(BATCH, first_id=(first + i) * BATCH, operator=OPERATOR) for i in range(count)]


def _send(st: ServerThread, batches: list[np.ndarray], *, after_each: Any = None) -> list[np.ndarray]:
    """Submit ``batches`` in order; the result codes of each."""
    codes = []
    with connect(st, operator=OPERATOR) as c:
        for b in batches:
            codes.append(c.transfer(b))
            if after_each is not None:
                after_each()
    return codes


def _hook(st: ServerThread, cls: type) -> Any:
    return st.call(lambda: next(h for h in st.server.ledger.hooks if isinstance(h, cls)))  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["fork", "thread"])
def test_realistic_restart_from_a_snapshot_equals_a_whole_journal_replay(
    start_server: StartServer, workload: Workload, tmp_path: Path, method: str
) -> None:
    # A low threshold flags many payments, so scores move with the model's flags (lag 4 batches).
    scenario = tmp_path / "low.toml"
    text = default_scenario_text()
    assert b"threshold = 0.0 " in text
    scenario.write_bytes(text.replace(b"threshold = 0.0 ", b"threshold = 0.05 "))

    def options(name: str, **extra: Any) -> dict[str, Any]:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        return {
            "profile": "realistic",
            "scenario": str(scenario),
            "journal": str(d / "j"),
            "trove": str(d / "trove"),
            "snapshot_every": "1k",
            "snapshot_method": method,
            "max_wait_us": 1000,
        } | extra

    st = start_server(**options("a"))
    assert not any("snapshots off" in n for n in st.server._journal_notes), st.server._journal_notes
    _send(st, _batches(workload, 0, 9), after_each=lambda: _wait_snapshot(st))
    assert _wait_snapshot(st) >= 2
    _send(st, _batches(workload, 9, 3))  # the tail after the newest snapshot
    st.stop()
    (_, snap), *_ = list_snapshots(tmp_path / "a" / "j.snapshots")
    risk_part = next(p for p in read_meta(snap).parts if p.owner == "risk_model")
    pending = risk_part.scalars["pending.batches"]
    assert len(pending) >= 2 and sum(pending) > 0, "the snapshot should hold batches awaiting the model"

    # The same journal without snapshots: a whole-journal replay (and a trove rebuilt from it).
    (tmp_path / "b").mkdir()
    for _, path in segment_files(tmp_path / "a" / "j"):
        shutil.copy2(path, tmp_path / "b" / path.name)
    restored = start_server(**options("a"))
    replayed = start_server(**options("b", snapshot_every="off"))
    r_rec, w_rec = restored.server.recovery, replayed.server.recovery
    assert r_rec is not None and w_rec is not None
    assert "after the snapshot" in r_rec.message and w_rec.batches == 12
    assert r_rec.batches < w_rec.batches
    _assert_same(_state(restored), _state(replayed))
    risk = _hook(restored, RiskModel)
    assert restored.call(lambda: len(risk._pending)) > 0  # pending batches are carried, not drained

    # Then both answer the same traffic identically: flags of the restored pending batches lower
    # scores at the same batch in both, so credit restrictions fall on the same payments.
    more = _batches(workload, 12, 8)
    got, want = _send(restored, more), _send(replayed, more)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
    assert (np.concatenate(got) == ResultCode.OK).any()
    _assert_same(_state(restored), _state(replayed))
    assert risk.flagged == _hook(replayed, RiskModel).flagged > 0
    social = _hook(restored, SocialCredit), _hook(replayed, SocialCredit)
    moved = restored.call(lambda: social[0].moves)
    assert moved > 0 and moved == replayed.call(lambda: social[1].moves)
    transfers = restored.call(lambda: restored.server.ledger.stats.transfers)
    restored.stop()
    replayed.stop()
    # Hook outputs: each trove holds one row per transfer that reached its ledger.
    for name in ("a", "b"):
        assert trove_stats(str(tmp_path / name / "trove"))["rows"] == transfers, name


def _trove_hooks(trove: Path) -> list[Any]:
    # compact off and a flush after every batch (below): one trove segment per journal entry, so
    # the newest segments can be lost precisely.
    config = TroveConfig(dir=str(trove), flush_interval_s=0.05, compact=False)
    return [WalletLimits(), SocialCredit(), SurveillanceLog(SurveillanceLogConfig(trove=config))]


def test_a_trove_behind_the_snapshot_is_re_fed_from_the_kept_journal_only(
    start_server: StartServer, workload: Workload, tmp_path: Path
) -> None:
    journal, trove = tmp_path / "j", tmp_path / "trove"
    kw = {"journal": str(journal), "snapshot_every": "1k", "journal_segment_bytes": 1 << 16, "max_wait_us": 1000}
    st = start_server(hooks=_trove_hooks(trove), **kw)
    log = _hook(st, SurveillanceLog)

    def settle() -> None:
        _wait_snapshot(st)
        st.call(lambda: log.trove.flush())

    _send(st, _batches(workload, 0, 24), after_each=settle)
    stats = st.call(lambda: st.server.stats())
    assert stats["journal"]["retired_segments"] >= 1, stats["journal"]  # the watermark rule deleted some
    sent = st.call(lambda: st.server.ledger.stats.transfers)
    st.stop()
    assert trove_stats(str(trove))["rows"] == sent

    (newest, _), (older, _) = list_snapshots(tmp_path / "j.snapshots")[:2]
    manifest = load_manifest(trove)
    assert manifest is not None
    # Lose every trove segment wholly after the older snapshot: the trove's watermark falls behind
    # the newest snapshot, to a point the kept journal still covers (entries the oldest snapshot
    # covers and the trove held may be gone from the journal: lost from the trove then, they could
    # not come back, and the restart would refuse, naming the missing entries).
    lost = [s for s in manifest.segments if min(lo for lo, _ in s.seq_ranges) > older]
    assert lost and min(lo for s in lost for lo, _ in s.seq_ranges) <= newest
    for s in lost:
        for f in s.files:
            (trove / f.path).unlink()
    first_kept = segment_files(journal)[1][0]
    assert first_kept <= older + 1 < newest, "the journal from the trove's watermark must have been kept"

    again = start_server(hooks=_trove_hooks(trove), **kw)
    rec = again.server.recovery
    assert rec is not None and "after the snapshot" in rec.message
    # The ledger replays only the entries after the newest snapshot: batches, and SYNC entries
    # (a pipelined fsync's lands after the snapshot of the batch it covers); none applied twice.
    last_seq = again.call(lambda: again.server.journal.seq)
    assert rec.batches <= last_seq - newest, (rec.batches, last_seq, newest)
    assert again.call(lambda: again.server.ledger.stats.transfers) == sent  # nothing applied twice
    more = _send(again, _batches(workload, 24, 3))
    assert all((c == ResultCode.OK).any() for c in more)
    through_engine = again.call(lambda: again.server.ledger.stats.transfers)
    again.stop()
    after = trove_stats(str(trove))
    assert after["rows"] == through_engine == sent + 3 * BATCH, after
    rows, distinct = _distinct_rows(trove)
    assert rows == distinct == after["rows"]  # the re-feed wrote only what the trove lacked

    # A trove that lost rows the journal no longer holds (behind the watermark) cannot be rebuilt:
    # the restart refuses and says so, rather than start with a trove missing payments.
    shutil.rmtree(trove)
    hooks = _trove_hooks(trove)
    try:
        with pytest.raises(JournalDamaged, match="durable consumer such as the trove"):
            Server(ServerConfig(port=0, accounts=TEST_ACCOUNTS, seed=TEST_SEED, **kw), hooks=hooks)
    finally:
        for hook in hooks:
            hook.close()  # the trove's process, started when the hooks attached
