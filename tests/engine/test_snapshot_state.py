"""The state interface snapshots are written from (``state_arrays``/``state_scalars``): complete and exact.

The snapshot code never names a column: it writes whatever the ledger and each hook list. So the
lists must hold every per-account array (a packed or added column that is not listed would be
silently lost on a restart from a snapshot), and a write/read round trip into a freshly built
ledger must give back every array and scalar.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.copy_on_update import CopyOnUpdate
from engine.hooks.audit_chain import AuditChain
from engine.hooks.base import Hook, PerTransferHook
from engine.hooks.blacklist import Blacklist
from engine.hooks.freeze import Freeze
from engine.hooks.privacy import Privacy
from engine.hooks.risk_model import RiskModel, RiskModelConfig
from engine.hooks.social_credit import SocialCredit
from engine.hooks.surveillance_log import SurveillanceLog, SurveillanceLogConfig
from engine.hooks.wallet_limits import WalletLimits
from engine.journal import Journal, create
from engine.server import ServerConfig, build_ledger
from engine.server.snapshots import Snapshotter, snapshot_refusal, state_owners
from engine.snapshot import SnapshotSchedule, capture, list_snapshots, load_into, verify, write_snapshot
from loadgen.generator.workload import Workload, WorkloadConfig

ACCOUNTS = 5_000


def _hooks() -> list[Hook]:
    ring = SurveillanceLog(SurveillanceLogConfig(mode="buffer", capacity=1 << 15))
    return [WalletLimits(), Blacklist(), Freeze(), SocialCredit(), AuditChain(), Privacy(), ring]


def _config() -> ServerConfig:
    return ServerConfig(port=0, accounts=ACCOUNTS, seed=11)


def test_every_per_account_array_is_listed_for_snapshots() -> None:
    ledger = build_ledger(_config(), _hooks())
    for name, owner in state_owners(ledger):
        listed = {id(a) for a in owner.state_arrays().values()}
        for attr, value in vars(owner).items():
            if isinstance(value, np.ndarray) and value.ndim and len(value) == ACCOUNTS:
                shared = any(value is a for a in ledger.state_arrays().values())  # the ledger's flags
                assert id(value) in listed or shared, f"{name}.{attr} is per-account state missing from state_arrays"


def test_snapshot_round_trip_restores_every_array_and_scalar(tmp_path: Path) -> None:
    ledger = build_ledger(_config(), _hooks())
    workload = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=11))
    for i in range(6):
        ledger.apply(workload.batch(400, first_id=i * 400, operator=i % 3))
        ledger.run_deferred()
    path, size = write_snapshot(
        tmp_path, 42, _config().journal_header(), capture(state_owners(ledger)), chunk_bytes=4096
    )
    assert size == path.stat().st_size
    meta = verify(path)
    assert meta.journal_seq == 42
    fresh = build_ledger(_config(), _hooks())
    load_into(path, meta, dict(state_owners(fresh)))
    for (name, want), (_, got) in zip(state_owners(ledger), state_owners(fresh), strict=True):
        assert got.state_scalars() == want.state_scalars(), name
        wa, ga = want.state_arrays(), got.state_arrays()
        assert wa.keys() == ga.keys(), name
        for key in wa:
            assert np.array_equal(wa[key], ga[key]), f"{name}.{key}"
    # And it goes on identically.
    batch = workload.batch(400, first_id=10_000, operator=1)
    assert np.array_equal(ledger.apply(batch.copy()), fresh.apply(batch.copy()))
    assert np.array_equal(ledger.balance, fresh.balance)


def test_a_hook_that_does_not_declare_its_state_turns_snapshots_off() -> None:
    seen: list[int] = []  # state a snapshot could not see: per-transfer callbacks' own variables
    ledger = build_ledger(_config(), [WalletLimits(), PerTransferHook("counter", observe=lambda t, c: seen.append(c))])
    assert "do not declare their state" in snapshot_refusal(ledger)
    assert snapshot_refusal(build_ledger(_config(), _hooks())) == ""


def _copies(ledger: Any) -> dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]]:
    return {n: ({k: a.copy() for k, a in o.state_arrays().items()}, o.state_scalars()) for n, o in state_owners(ledger)}


def test_copy_on_update_writes_the_state_as_of_capture_while_the_sequencer_changes_it(
    tmp_path: Path, seed: int
) -> None:
    """A writer thread writes from live arrays while batches and admin changes go on, and a
    wallet_limits day rollover resets every account mid-snapshot: the file holds the capture."""
    rng = np.random.default_rng(seed)
    ledger = build_ledger(_config(), _hooks())
    workload = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=seed))
    for i in range(4):
        ledger.apply(workload.batch(400, first_id=i * 400, operator=1))
        ledger.run_deferred()
    want = _copies(ledger)
    per_account = {(n, a) for n, o in state_owners(ledger) for a in o.per_account_arrays()}
    assert ("ledger", "balance") in per_account and ("social_credit", "score") in per_account
    cou = CopyOnUpdate(capture(state_owners(ledger)), per_account, 2048, queue_chunks=2)
    header = _config().journal_header()
    result: list[Path] = []
    writer = threading.Thread(
        target=lambda: result.append(
            write_snapshot(tmp_path, 7, header, cou.parts, read_chunk=cou.read_chunk, chunk_bytes=2048)[0]
        )
    )
    writer.start()
    (limits,) = [h for h in ledger.hooks if isinstance(h, WalletLimits)]
    (freeze,) = [h for h in ledger.hooks if isinstance(h, Freeze)]
    step = 0
    while not cou.copied_all:
        batch = workload.batch(400, first_id=10_000 + step * 400, operator=2)
        cou.before_update(np.unique(np.concatenate([batch["payer"], batch["payee"]])))
        ledger.apply(batch)
        ledger.run_deferred()
        if step == 3:  # a forced reset of every spend word at once (engine.hooks.wallet_limits)
            cou.before_update(None, frozenset({"wallet_limits"}))
            limits.spent_word[:] = 0
        account = int(rng.integers(ACCOUNTS))
        cou.before_update(np.array([account]))
        freeze.freeze(account)
        cou.feed(1)
        step += 1
    writer.join()
    assert step > 10, "the snapshot finished before the state changed under it"
    assert cou.undo_bytes_max > 0
    fresh = build_ledger(_config(), _hooks(), from_snapshot=True)
    load_into(result[0], verify(result[0]), dict(state_owners(fresh)))
    got = _copies(fresh)
    for name, (arrays, scalars) in want.items():
        assert got[name][1] == scalars, name
        for key, array in arrays.items():
            assert np.array_equal(got[name][0][key], array), f"{name}.{key} differs from the capture"


@pytest.mark.parametrize("model_thread", [True, False])
def test_copy_on_update_holds_the_capture_while_risk_flags_lower_earlier_payers_scores(
    tmp_path: Path, model_thread: bool
) -> None:
    """risk_model applies the flags of batch k at the start of batch k + lag: it lowers scores of
    accounts that are not in the batch at hand. The snapshotter saves them first
    (``Hook.snapshot_touches_others``), so a copy-on-update snapshot still holds the capture:
    features, scores and the batches awaiting the model."""
    config = RiskModelConfig(threshold=0.05, model_thread=model_thread)  # a low threshold flags many
    hooks = lambda: [SocialCredit(), RiskModel(config)]  # noqa: E731
    ledger = build_ledger(_config(), hooks())
    workload = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=11))
    batches = (workload.batch(400, first_id=i * 400, operator=1) for i in range(10_000))
    for _ in range(6):
        ledger.apply(next(batches))
        ledger.run_deferred()  # as the server does (risk_model's features are deferred)
    (social, risk) = ledger.hooks
    assert isinstance(social, SocialCredit) and isinstance(risk, RiskModel)
    want = _copies(ledger)
    assert len(want["risk_model"][0]["pending.payers"]) > 0
    header = _config().journal_header()
    create(tmp_path / "j", header)
    journal = Journal(tmp_path / "j", "off")
    snap = Snapshotter(tmp_path / "snaps", SnapshotSchedule(), 2, ledger, journal, header, method="thread")
    snap.start()
    flagged, steps = risk.flagged, 0
    while snap.in_progress:
        batch = next(batches)
        snap.before_batch(batch)
        ledger.apply(batch)
        ledger.run_deferred()
        snap.maybe_start()  # copies the next chunk for the writer; reaps it when done
        steps += 1
    journal.close()
    assert steps > risk.config.lag_batches and risk.flagged > flagged, "no flags applied while it wrote"
    fresh = build_ledger(_config(), hooks(), from_snapshot=True)
    ((_, path),) = list_snapshots(tmp_path / "snaps")
    load_into(path, verify(path), dict(state_owners(fresh)))
    got = _copies(fresh)
    for name, (arrays, scalars) in want.items():
        assert got[name][1] == scalars, name
        for key, array in arrays.items():
            assert np.array_equal(got[name][0][key], array), f"{name}.{key} differs from the capture"
    for h in (*ledger.hooks, *fresh.hooks):
        h.close()
