"""Signed payments through the server (issue 19): verdicts from the validator tier before the ledger.

Good signatures apply exactly as the reference model applies them alone; forged ones get
BAD_SIGNATURE, never reach the ledger and do not consume their transfer ids; an unsigned Submit on
a server that requires signatures is refused per transfer; an unavailable tier answers OVERLOADED.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import signing
from engine.client import Client, ServerError
from engine.codes import ResultCode
from engine.reference import ReferenceLedger
from engine.server import ServerThread
from engine.validator_api import Validators, ValidatorStats, ValidatorsUnavailable
from engine.wire import ErrorCode, SignedSubmit
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
def test_run_signed_profile_with_one_validator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The shipped scenario with a p99 SLO any run meets: the signed path is under test here, not
    # whether this (shared, loaded) machine meets 20 ms.
    scenario = scenario_with_slo(tmp_path, "60000.0")
    argv = [
        "run",
        "--scenario",
        scenario,
        "--profile",
        "signed",
        "--validators",
        "1",
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
    assert summary["profile"] == "signed"
    assert summary["audit_ok"] is True
    result = load(summary["result_file"])
    c = result.counts
    assert c.sent == c.results == c.scheduled
    assert c.unanswered == c.protocol_errors == 0
    # Every payment was signed and verified: none refused for its signature.
    assert result.codes.get("bad_signature", 0) == 0
    assert result.codes.get("ok", 0) > 0


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
