"""Signed payments through the server (issue 19): verdicts from the validator tier before the ledger.

Good signatures apply exactly as the reference model applies them alone; forged ones get
BAD_SIGNATURE, never reach the ledger and do not consume their transfer ids; an unsigned Submit on
a server that requires signatures is refused per transfer; an unavailable tier answers OVERLOADED.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine import signing, wire
from engine.client import Client, ServerError
from engine.codes import ResultCode
from engine.hooks.freeze import Freeze, FreezeConfig
from engine.reference import ReferenceLedger
from engine.server import ServerThread
from engine.validator_api import Validators, ValidatorStats, ValidatorsUnavailable
from engine.validators import LocalValidators
from engine.wire import Ack, Balance, BalanceReply, ErrorCode, Results, SignedSubmit, codes_from_bytes
from loadgen.cli.main import main
from loadgen.generator.workload import Workload, WorkloadConfig
from loadgen.results.run import load
from tests.support.servers import TEST_ACCOUNTS, TEST_SEED, StartServer, assert_nothing_more, connect, scenario_with_slo


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key registries and signed pools go to the test's directory (subprocesses inherit it)."""
    monkeypatch.setenv("CBDC_CACHE_DIR", str(tmp_path / "cache"))


def signed_submit(client: Client, records: np.ndarray, signatures: bytes) -> np.ndarray:
    seq = client.next_ref()
    client.send(SignedSubmit(seq, records.tobytes(), signatures))
    return client.results(seq)


def reference_of(st: ServerThread) -> ReferenceLedger:
    """The reference model in the server's starting state (call before any Submit)."""
    ledger = st.server.ledger
    assert ledger is not None
    balance, classes = st.call(lambda: (ledger.balance.tolist(), ledger.wallet_class.tolist()))
    return ReferenceLedger(balance, classes, operators=st.config.operators)


def server_balances(st: ServerThread) -> list[int]:
    ledger = st.server.ledger
    assert ledger is not None
    return list(st.call(lambda: ledger.balance.tolist()))


@pytest.mark.parametrize("validators", ["0", "1"])
def test_good_signatures_apply_forged_ones_are_refused_and_leave_their_ids(
    start_server: StartServer, validators: str
) -> None:
    st = start_server(signatures="required", validators=validators)
    ref = reference_of(st)
    batch = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED)).batch(300, first_id=0, operator=0)
    good_sigs = signing.sign_records(batch, TEST_SEED)
    forged = bytearray(good_sigs)
    rng = np.random.default_rng(19)
    bad = np.zeros(len(batch), dtype=bool)
    bad[rng.choice(len(batch), 30, replace=False)] = True
    for i in np.flatnonzero(bad).tolist():
        forged[i * 64 + int(rng.integers(64))] ^= 1 << int(rng.integers(8))

    with connect(st) as client:
        codes = signed_submit(client, batch, bytes(forged))
        assert (codes[bad] == ResultCode.BAD_SIGNATURE).all()
        np.testing.assert_array_equal(codes[~bad], ref.apply(batch[~bad]))
        assert (codes[~bad] == ResultCode.OK).any()
        assert server_balances(st) == ref.balance

        # An unsigned Submit is refused, transfer by transfer, and applies nothing.
        unsigned = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED), stream=5).batch(
            50, first_id=1000, operator=0
        )
        assert (client.transfer(unsigned) == ResultCode.BAD_SIGNATURE).all()
        assert server_balances(st) == ref.balance

        # The forged transfers' ids were not consumed: signed properly, they apply now.
        again = batch[bad]
        codes = signed_submit(client, again, signing.sign_records(again, TEST_SEED))
        np.testing.assert_array_equal(codes, ref.apply(again))
        assert not (codes == ResultCode.DUPLICATE).any()
        assert server_balances(st) == ref.balance
        assert_nothing_more(client)
    counters = st.call(lambda: dict(st.server.counters))
    assert counters["bad_signatures"] == int(bad.sum())
    assert counters["unsigned_refused"] == len(unsigned)
    tier = st.call(st.server.stats)["validators"]
    assert tier["transfers"] == len(batch) + len(again)


def test_signed_submit_to_a_server_without_signatures_is_an_unknown_message(start_server: StartServer) -> None:
    st = start_server()
    batch = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED)).batch(5, first_id=0, operator=0)
    with connect(st) as client:
        with pytest.raises(ServerError) as err:
            signed_submit(client, batch, bytes(64 * len(batch)))
        assert err.value.code == ErrorCode.UNKNOWN_MESSAGE


class _Unavailable(Validators):
    """A tier whose every batch fails, as when all its workers died."""

    workers = 1

    async def start(self) -> None:
        pass

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        raise ValidatorsUnavailable("every worker died")

    async def close(self) -> None:
        pass

    def stats(self) -> ValidatorStats:
        return ValidatorStats(kind="test", workers=1)


def test_unavailable_validators_answer_overloaded_and_apply_nothing(start_server: StartServer) -> None:
    st = start_server(signatures="required")
    before = server_balances(st)
    st.call(setattr, st.server.batcher, "validators", _Unavailable())
    batch = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED)).batch(40, first_id=0, operator=0)
    with connect(st) as client:
        codes = signed_submit(client, batch, signing.sign_records(batch, TEST_SEED))
        assert (codes == ResultCode.OVERLOADED).all()
        assert_nothing_more(client)
    assert server_balances(st) == before


@pytest.mark.slow
@pytest.mark.parametrize(("profile", "validators"), [("signed", "1"), ("signed-full", "2")])
def test_run_signed_profile_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: str, validators: str
) -> None:
    """``run`` of each signed profile: every payment signed, verified by the local workers, settled,
    audited (signed-full: through the full hook stack and its trove, with two workers)."""
    # The shipped scenario with a p99 SLO any run meets: the signed path is under test here, not
    # whether this (shared, loaded) machine meets 20 ms.
    scenario = scenario_with_slo(tmp_path, "60000.0")
    argv = [
        "run",
        "--scenario",
        scenario,
        "--profile",
        profile,
        "--validators",
        validators,
        "--rate",
        "2000",
        "--seconds",
        "2",
    ]
    argv += ["--accounts", "20000", "--warmup", "0.5", "--drain", "5", "--out", str(tmp_path), "--json"]
    code = main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert code == 0, out
    assert summary["exit_status"] == 0
    assert summary["profile"] == profile
    assert summary["audit_ok"] is True
    result = load(summary["result_file"])
    c = result.counts
    assert c.sent == c.results == c.scheduled
    assert c.unanswered == c.protocol_errors == 0
    # Every payment was signed and verified by the workers: none refused for its signature.
    assert result.codes.get("bad_signature", 0) == 0
    assert result.codes.get("ok", 0) > 0
    tier = result.server.stats_end["validators"]
    assert (tier["kind"], tier["workers"]) == ("local", int(validators))
    assert tier["transfers"] > 0 and tier["failed_batches"] == tier["worker_deaths"] == 0
    # The result file records the workers' CPU as a tier of its own (loadgen.results.tiers).
    assert result.server.tier_workers == {"validators": int(validators)}
    assert result.server.tier_cpu_s["validators"] > 0
    assert result.cpu_ns_per_payment["validators"] > 0


def test_journal_holds_only_verified_transfers(start_server: StartServer, tmp_path: Path) -> None:
    """After a restart from the journal the forged transfers are absent and their ids still free."""
    journal = tmp_path / "signed.cbj"
    st = start_server(signatures="required", validators="0", journal=str(journal))
    ref = reference_of(st)
    batch = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED)).batch(100, first_id=0, operator=0)
    sigs = bytearray(signing.sign_records(batch, TEST_SEED))
    bad = np.zeros(len(batch), dtype=bool)
    bad[::7] = True
    for i in np.flatnonzero(bad).tolist():
        sigs[i * 64] ^= 1
    with connect(st) as client:
        codes = signed_submit(client, batch, bytes(sigs))
    np.testing.assert_array_equal(codes[~bad], ref.apply(batch[~bad]))
    st.stop()

    st = start_server(signatures="required", validators="0", journal=str(journal))
    assert server_balances(st) == ref.balance
    again = batch[bad]
    with connect(st) as client:
        codes = signed_submit(client, again, signing.sign_records(again, TEST_SEED))
    np.testing.assert_array_equal(codes, ref.apply(again))
    assert server_balances(st) == ref.balance


class _Slow(Validators):
    """The inline tier, answering each batch after a pause: Submits stay in ``verifying`` a while."""

    def __init__(self, inner: Validators, pause_s: float) -> None:
        self.inner, self.pause_s, self.workers = inner, pause_s, inner.workers

    async def start(self) -> None:
        await self.inner.start()

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        await asyncio.sleep(self.pause_s)
        return await self.inner.verify(records, signatures)

    async def close(self) -> None:
        await self.inner.close()

    def stats(self) -> ValidatorStats:
        return self.inner.stats()


def test_admin_requests_wait_for_the_submits_being_verified_before_them(start_server: StartServer) -> None:
    """Issue 19, item 4: a Balance or Freeze sent right after a SignedSubmit used to run before
    its verdicts were in (it read the balance before the payment, and a Freeze refused it)."""
    st = start_server(hooks=[Freeze(FreezeConfig(frozen_fraction=0))], signatures="required", validators="0")
    tier = st.server.batcher.validators
    assert tier is not None
    st.call(setattr, st.server.batcher, "validators", _Slow(tier, 0.3))
    ref = reference_of(st)
    batch = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED)).batch(50, first_id=0, operator=0)
    expected = ref.apply(batch)
    i = expected.index(ResultCode.OK)
    first, second = batch[i : i + 1].copy(), batch[i : i + 1].copy()
    second["transfer_id"] = 100
    payer, payee = int(first["payer"][0]), int(first["payee"][0])
    with connect(st) as client:
        before = client.balance(payer)
        s1 = client.next_ref()
        client.send(SignedSubmit(s1, first.tobytes(), signing.sign_records(first, TEST_SEED)))
        balance_req, freeze_req = client.next_ref(), client.next_ref()
        client.send(Balance(balance_req, payer))  # pipelined: no wait for Results
        client.send(wire.Freeze(freeze_req, payee))
        s2 = client.next_ref()
        client.send(SignedSubmit(s2, second.tobytes(), signing.sign_records(second, TEST_SEED)))
        replies = [client.recv() for _ in range(4)]
        assert [type(m) for m in replies] == [Results, BalanceReply, Ack, Results]  # in arrival order
        assert codes_from_bytes(replies[0].codes).tolist() == [ResultCode.OK]  # type: ignore[union-attr]
        assert replies[1].balance_fen == before - int(first["amount_fen"][0])  # type: ignore[union-attr]
        assert codes_from_bytes(replies[3].codes).tolist() == [ResultCode.FROZEN]  # type: ignore[union-attr]
        assert client.audit().ok
        assert_nothing_more(client)
    assert st.call(lambda: st.server.counters["admin_waited_for_verdicts"]) == 2


class _Staggered(_Slow):
    """The inline tier answering its n-th batch after ``pauses[n]`` (as two workers' replies come back apart)."""

    def __init__(self, inner: Validators, pauses: list[float]) -> None:
        super().__init__(inner, 0.0)
        self.pauses = pauses

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        await asyncio.sleep(self.pauses.pop(0) if self.pauses else 0.0)
        return await self.inner.verify(records, signatures)


def test_submits_admitted_together_are_one_ledger_batch_when_their_verdicts_come_apart(
    start_server: StartServer,
) -> None:
    """Two SignedSubmits read together (a generator tick) whose verdicts come back 50 ms apart are
    applied as one ledger batch, not one per reply; their results are the reference model's,
    applied one after the other in arrival order."""
    st = start_server(signatures="required", validators="0")
    tier = st.server.batcher.validators
    assert tier is not None
    st.call(setattr, st.server.batcher, "validators", _Staggered(tier, [0.0, 0.05]))
    st.call(setattr, st.server.batcher, "hold_max_s", 30.0)  # the bound is the next test's
    ref = reference_of(st)
    wl = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED))
    first, second = wl.batch(40, first_id=0, operator=0), wl.batch(40, first_id=40, operator=0)
    with connect(st) as client:
        before = client.stats()["batches"]
        s1, s2 = client.next_ref(), client.next_ref()
        client.send_raw(
            client.codec.frame(SignedSubmit(s1, first.tobytes(), signing.sign_records(first, TEST_SEED)))
            + client.codec.frame(SignedSubmit(s2, second.tobytes(), signing.sign_records(second, TEST_SEED)))
        )
        np.testing.assert_array_equal(client.results(s1), ref.apply(first))
        np.testing.assert_array_equal(client.results(s2), ref.apply(second))
        assert client.stats()["batches"] - before == 1
        assert_nothing_more(client)
    assert server_balances(st) == ref.balance


def test_a_submit_whose_verdicts_are_late_does_not_hold_those_verified_before_it(start_server: StartServer) -> None:
    """The hold is bounded (``VERDICT_HOLD_MAX_S``, 5 ms): with the second Submit's verdicts 2 s
    late (a hung worker), the first is applied and answered while the second is still being
    verified, in a batch of its own; both match the reference model."""
    st = start_server(signatures="required", validators="0")
    tier = st.server.batcher.validators
    assert tier is not None
    st.call(setattr, st.server.batcher, "validators", _Staggered(tier, [0.0, 2.0]))
    ref = reference_of(st)
    wl = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED))
    first, second = wl.batch(40, first_id=0, operator=0), wl.batch(40, first_id=40, operator=0)
    with connect(st) as client:
        s1, s2 = client.next_ref(), client.next_ref()
        client.send_raw(
            client.codec.frame(SignedSubmit(s1, first.tobytes(), signing.sign_records(first, TEST_SEED)))
            + client.codec.frame(SignedSubmit(s2, second.tobytes(), signing.sign_records(second, TEST_SEED)))
        )
        np.testing.assert_array_equal(client.results(s1), ref.apply(first))
        assert st.call(lambda: len(st.server.batcher.verifying)) == 1  # the second: still being verified
        np.testing.assert_array_equal(client.results(s2), ref.apply(second))
        assert client.stats()["batches"] == 2
        assert_nothing_more(client)
    assert server_balances(st) == ref.balance


class _Holds(_Slow):
    """The inline tier, recording each batch's ``hold_s`` and holding as the local pool does (until
    a batch comes without a hold)."""

    def __init__(self, inner: Validators) -> None:
        super().__init__(inner, 0.0)
        self.holds: list[float] = []

    @property
    def holding(self) -> bool:
        return bool(self.holds) and self.holds[-1] > 0

    def verify_future(self, records: bytes, signatures: bytes, *, hold_s: float = 0.0) -> asyncio.Future[np.ndarray]:
        self.holds.append(hold_s)
        return super().verify_future(records, signatures)


@pytest.mark.parametrize("gather_us", [1000, 0])
def test_a_signed_submit_is_held_for_the_other_operators_of_its_tick(start_server: StartServer, gather_us: int) -> None:
    """With two operators connected, operator 0's SignedSubmit asks the tier to hold it (for
    ``validator_gather_us``) until operator 1's comes, which goes without a hold and takes it
    along; operator 0 alone again starts a new hold. ``validator_gather_us=0``: no holds. Results are
    the reference model's either way."""
    st = start_server(signatures="required", validators="0", validator_gather_us=gather_us)
    tier = st.server.batcher.validators
    assert tier is not None
    holds = _Holds(tier)
    st.call(setattr, st.server.batcher, "validators", holds)
    ref = reference_of(st)
    wl = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED))
    batches = [wl.batch(20, first_id=0, operator=0), wl.batch(20, first_id=0, operator=1)]
    batches.append(wl.batch(20, first_id=20, operator=0))
    with connect(st, operator=0) as op0, connect(st, operator=1) as op1:
        for client, batch in zip([op0, op1, op0], batches, strict=True):
            codes = signed_submit(client, batch, signing.sign_records(batch, TEST_SEED))
            np.testing.assert_array_equal(codes, ref.apply(batch))
    hold_s = gather_us / 1e6
    assert holds.holds == [hold_s, 0.0, hold_s]
    assert server_balances(st) == ref.balance


class _Serial(_Slow):
    """A tier of fixed capacity: one batch at a time, ``pause_s`` each (a saturated validator pool)."""

    def __init__(self, inner: Validators, pause_s: float) -> None:
        super().__init__(inner, pause_s)
        self._one = asyncio.Lock()

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        async with self._one:
            return await super().verify(records, signatures)


@pytest.mark.slow
def test_a_flood_of_bad_signatures_from_one_operator_does_not_starve_another(start_server: StartServer) -> None:
    """Fair share applies before the validators (issue 19): operator 0 floods forged SignedSubmits
    into a saturated tier (20 ms per Submit); operator 1's correctly signed payments are neither
    shed nor refused, and apply exactly as the reference model applies them alone."""
    st = start_server(signatures="required", validators="0", max_batch=100, queue_limit=400)
    tier = st.server.batcher.validators
    assert tier is not None
    st.call(setattr, st.server.batcher, "validators", _Serial(tier, 0.02))
    ref = reference_of(st)
    wl = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED))
    rounds, per_round = 6, 20
    flood = [wl.batch(50, first_id=k * 50, operator=0) for k in range(rounds * per_round)]
    forged = bytes(64 * 50)
    good = [wl.batch(50, first_id=100_000 + i * 50, operator=1) for i in range(6)]
    with connect(st, operator=0) as flooder, connect(st, operator=1) as bank:
        frames = [flooder.codec.frame(SignedSubmit(k + 1, b.tobytes(), forged)) for k, b in enumerate(flood)]

        def send_flood() -> None:
            for r in range(rounds):
                flooder.send_raw(b"".join(frames[r * per_round : (r + 1) * per_round]))
                time.sleep(0.02)

        t = threading.Thread(target=send_flood)
        t.start()
        time.sleep(0.05)
        served = [signed_submit(bank, b, signing.sign_records(b, TEST_SEED)) for b in good]
        t.join()
        flooded = np.concatenate([flooder.results(k + 1) for k in range(len(flood))])
        stats = bank.stats()
        assert_nothing_more(bank)
    for batch, codes in zip(good, served, strict=True):
        np.testing.assert_array_equal(codes, ref.apply(batch))  # not OVERLOADED, not BAD_SIGNATURE
    assert set(np.unique(flooded).tolist()) == {ResultCode.BAD_SIGNATURE, ResultCode.OVERLOADED}
    assert stats["shed_over_fair_share"] > 0 and stats["fair_share"] == 200
    assert server_balances(st) == ref.balance  # nothing of the flood applied


def test_a_validator_killed_mid_run_loses_nothing_and_the_pool_recovers(start_server: StartServer) -> None:
    """SIGKILL one of two validator processes while Submits are in flight: every Submit gets one
    Results; its chunk is re-verified by the other worker (or, past the attempts, the whole Submit is
    OVERLOADED: nothing of it applied); the pool starts a replacement; balances equal the reference
    model applying exactly the Submits that were not refused; money is conserved."""
    st = start_server(signatures="required", validators="2")
    pool = st.server.validators
    assert isinstance(pool, LocalValidators)
    ref = reference_of(st)
    wl = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED))
    batches = [wl.batch(250, first_id=k * 250, operator=0) for k in range(40)]
    with connect(st) as client:
        frames = [
            client.codec.frame(SignedSubmit(k + 1, b.tobytes(), signing.sign_records(b, TEST_SEED)))
            for k, b in enumerate(batches)
        ]
        pids = st.call(pool.worker_pids)
        client.send_raw(b"".join(frames))
        first = client.results(1)
        os.kill(pids[0], signal.SIGKILL)  # 39 Submits, about 10,000 verifications, still to go
        got = [first] + [client.results(k + 1) for k in range(1, len(batches))]
        for batch, codes in zip(batches, got, strict=True):
            if (codes == ResultCode.OVERLOADED).all():
                continue  # refused whole: never applied, safe to resend
            np.testing.assert_array_equal(codes, ref.apply(batch))
        assert server_balances(st) == ref.balance
        assert client.audit().ok
        again = wl.batch(100, first_id=20_000, operator=0)
        np.testing.assert_array_equal(
            signed_submit(client, again, signing.sign_records(again, TEST_SEED)), ref.apply(again)
        )
        assert_nothing_more(client)
    s = st.call(pool.stats)
    assert s.worker_deaths == 1 and s.restarts == 1
    assert s.requeued_chunks + s.failed_batches >= 1
    live = st.call(pool.worker_pids)
    assert len(live) == 2 and pids[0] not in live
