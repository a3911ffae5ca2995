"""End-to-end server tests on loopback: exactly-once results, sequential equivalence, conservation,
micro-batching, admin requests, echo mode."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from engine.categories import Category
from engine.client import ServerError
from engine.codes import ResultCode
from engine.ledger import Ledger
from engine.server import ServerConfig, build_ledger
from engine.wire import Error, ErrorCode, Submit
from loadgen.generator.workload import Workload, WorkloadConfig
from tests.support.hooks import blacklist_hook, freeze_hook
from tests.support.servers import TEST_ACCOUNTS, TEST_SEED, StartServer, assert_nothing_more, connect


def _oracle() -> Ledger:
    """An in-process ledger with the same seeded initial state as the test servers."""
    return build_ledger(ServerConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED))


def _batches(operator: int, sizes: list[int], seed: int, stream: int) -> list[np.ndarray]:
    wl = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=seed), stream=stream)
    out, first = [], 0
    for n in sizes:
        out.append(wl.batch(n, first_id=first, operator=operator))
        first += n
    return out


def test_welcome_describes_the_server(start_server: StartServer) -> None:
    st = start_server(max_batch=1024, queue_limit=4096, max_wait_us=1500)
    with connect(st, operator=5) as c:
        w = c.welcome
        assert w is not None
        assert (w.accounts, w.profile, w.max_batch, w.queue_limit, w.echo) == (
            TEST_ACCOUNTS,
            "baseline",
            1024,
            4096,
            False,
        )
        assert w.max_wait_us == 2000  # rounded up to the event loop's 1 ms timer resolution


def test_pipelined_results_match_one_at_a_time_semantics(start_server: StartServer) -> None:
    """One connection, pipelined Submits of mixed sizes: however the server batches them, the codes
    and every balance equal an in-process ledger applying the same transfers in order."""
    rng = np.random.default_rng(TEST_SEED)
    print(f"seed {TEST_SEED}")
    sizes = [int(x) for x in rng.integers(0, 700, 60)]
    batches = _batches(2, sizes, TEST_SEED, stream=1)
    st = start_server(max_batch=2048, max_wait_us=1000)
    with connect(st, operator=2) as c:
        seqs = [c.submit(b) for b in batches]
        got = [c.results(s) for s in seqs]
        audit = c.audit()
        assert_nothing_more(c)
    oracle = _oracle()
    want = [oracle.apply(b) for b in batches]
    for s, g, w in zip(sizes, got, want, strict=True):
        assert len(g) == s
        np.testing.assert_array_equal(g, w)
    server_balance = st.call(lambda: st.server.ledger.balance.copy())
    np.testing.assert_array_equal(server_balance, oracle.balance)
    assert audit.ok and audit.total_fen == audit.expected_fen == oracle.supply_fen
    stats = st.call(st.server.stats)
    assert stats["transfers"] == sum(sizes)
    assert stats["batches"] < len(sizes)  # coalesced: fewer engine batches than Submits
    assert sum(stats["batch_sizes"].values()) == stats["batches"]


@pytest.mark.slow
def test_concurrent_clients_every_transfer_answered_once_and_money_conserved(start_server: StartServer) -> None:
    st = start_server(max_batch=4096, queue_limit=1 << 20)  # no shedding here: see test_server_limits
    initial_total = _oracle().supply_fen
    clients = 6
    failures: list[BaseException] = []
    counts: dict[int, np.ndarray] = {}

    def run(op: int) -> None:
        try:
            rng = np.random.default_rng([TEST_SEED, op])
            sizes = [int(x) for x in rng.integers(1, 400, 120)]
            batches = _batches(op, sizes, TEST_SEED, stream=10 + op)
            with connect(st, operator=op) as c:
                seqs = [c.submit(b) for b in batches]
                # Collect in arrival order: each seq exactly once, with one code per transfer.
                seen: dict[int, np.ndarray] = {}
                while len(seen) < len(seqs):
                    msg = c.recv()
                    assert type(msg).__name__ == "Results", msg
                    assert msg.seq not in seen, f"seq {msg.seq} answered twice"
                    seen[msg.seq] = np.frombuffer(msg.codes, dtype=np.uint8)
                for s, n in zip(seqs, sizes, strict=True):
                    assert len(seen[s]) == n
                c.audit()  # a barrier: every earlier Results of this connection precedes its reply
                assert_nothing_more(c)
                counts[op] = np.bincount(np.concatenate(list(seen.values())), minlength=len(ResultCode))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(op,)) for op in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    with connect(st, operator=0) as c:
        audit = c.audit()
        stats = c.stats()
    assert audit.ok and audit.negative_accounts == 0
    assert audit.total_fen == audit.expected_fen == initial_total
    total = sum(counts.values())
    assert stats["transfers"] == int(total.sum()) and stats["overloaded"] == 0
    assert stats["codes"] == {ResultCode(i).name.lower(): int(k) for i, k in enumerate(total) if k}
    assert stats["codes"].get("ok", 0) > 0.5 * total.sum()


def test_small_submits_are_coalesced_into_engine_batches(start_server: StartServer) -> None:
    st = start_server(max_batch=8192, max_wait_us=20_000)
    batches = _batches(1, [10] * 200, TEST_SEED, stream=3)
    with connect(st, operator=1) as c:
        # All 200 Submits in one write: they reach the server within the 20 ms wait.
        seqs = list(range(1000, 1200))
        c.send_raw(b"".join(c.codec.frame(Submit(s, b.tobytes())) for s, b in zip(seqs, batches, strict=True)))
        for s in seqs:
            assert len(c.results(s)) == 10
        stats = c.stats()
    assert stats["submits"] == 200 and stats["transfers"] == 2000
    assert stats["batches"] <= 3, stats["batch_sizes"]


def test_balance_query_sees_applied_transfers(start_server: StartServer, workload: Workload) -> None:
    st = start_server()
    with connect(st, operator=0) as c:
        b = workload.batch(1, first_id=0)
        payer, payee = int(b["payer"][0]), int(b["payee"][0])
        b["amount_fen"] = 1
        before = c.balance(payer), c.balance(payee)
        assert c.transfer(b).tolist() == [ResultCode.OK]
        assert (c.balance(payer), c.balance(payee)) == (before[0] - 1, before[1] + 1)


def test_freeze_and_blacklist_take_effect(start_server: StartServer, workload: Workload) -> None:
    st = start_server(hooks=[freeze_hook(), blacklist_hook()])
    with connect(st, operator=0) as c:
        b = workload.batch(3, first_id=0)
        b["amount_fen"] = 1
        payer = int(b["payer"][0])
        c.freeze(payer)
        assert c.transfer(b[:1])[0] == ResultCode.FROZEN
        c.unfreeze(payer)
        assert c.transfer(b[1:2])[0] == ResultCode.OK
        payer2 = int(b["payer"][2])
        b["category"][2] = Category.AIR_TRAVEL  # a restricted category for listed payers
        c.blacklist_add(payer2)
        assert c.transfer(b[2:3])[0] == ResultCode.BLACKLISTED
        c.blacklist_remove(payer2)
        b2 = workload.batch(1, first_id=10)
        b2["payer"], b2["amount_fen"] = payer2, 1
        if int(b2["payee"][0]) == payer2:
            b2["payee"] = (payer2 + 1) % TEST_ACCOUNTS
        assert c.transfer(b2)[0] == ResultCode.OK
        stats = c.stats()
    assert stats["admin"] == {"freeze": 1, "unfreeze": 1, "blacklistadd": 1, "blacklistremove": 1}
    assert set(stats["hooks"]) == {"freeze", "blacklist"}
    assert all(h["ns_per_transfer"] > 0 for h in stats["hooks"].values())


def test_admin_queued_submits_are_applied_before_admin_requests(start_server: StartServer, workload: Workload) -> None:
    # A Freeze sent right after pipelined Submits must not overtake them: they run unfrozen.
    st = start_server(hooks=[freeze_hook()], max_wait_us=50_000)
    with connect(st, operator=0) as c:
        b = workload.batch(50, first_id=0)
        payer = int(b["payer"][0])
        seq = c.submit(b)
        c.freeze(payer)
        assert ResultCode.FROZEN not in c.results(seq)
        b3 = workload.batch(1, first_id=200)
        b3["payer"] = payer
        b3["payee"] = (payer + 1) % TEST_ACCOUNTS
        assert c.transfer(b3)[0] == ResultCode.FROZEN


@pytest.mark.parametrize("call", ["freeze", "unfreeze", "blacklist_add", "blacklist_remove"])
def test_policy_request_without_its_hook_is_refused(start_server: StartServer, call: str) -> None:
    st = start_server()
    with connect(st) as c:
        with pytest.raises(ServerError) as info:
            getattr(c, call)(1)
        assert info.value.code == ErrorCode.HOOK_NOT_ENABLED
        assert "baseline" in info.value.error.message


@pytest.mark.parametrize("call", ["freeze", "unfreeze", "blacklist_add", "blacklist_remove", "balance"])
@pytest.mark.parametrize("account", [TEST_ACCOUNTS, -1, 2**40])
def test_unknown_account_is_refused(start_server: StartServer, call: str, account: int) -> None:
    st = start_server(hooks=[freeze_hook(), blacklist_hook()])
    with connect(st) as c:
        with pytest.raises(ServerError) as info:
            getattr(c, call)(account)
        assert info.value.code == ErrorCode.UNKNOWN_ACCOUNT
        assert info.value.error.ref > 0
        assert f"0..{TEST_ACCOUNTS - 1}" in info.value.error.message
        assert c.audit().ok  # the connection still works


def test_echo_mode_acknowledges_everything_without_a_ledger(start_server: StartServer, workload: Workload) -> None:
    st = start_server(echo=True)
    assert st.server.ledger is None
    with connect(st, operator=4) as c:
        assert c.welcome is not None and c.welcome.echo and c.welcome.profile == "echo"
        b = workload.batch(500, first_id=0, operator=4)
        b["amount_fen"][:10] = -5  # would be INVALID_AMOUNT on a ledger
        assert c.transfer(b).tolist() == [ResultCode.OK] * 500
        for call, args in [("balance", (1,)), ("audit", ()), ("freeze", (1,))]:
            with pytest.raises(ServerError) as info:
                getattr(c, call)(*args)
            assert info.value.code == ErrorCode.ECHO_MODE
        stats = c.stats()
    assert stats["mode"] == "echo" and stats["transfers"] == 500 and stats["codes"] == {"ok": 500}
    assert "hooks" not in stats


def test_half_closed_client_still_gets_its_results(start_server: StartServer, workload: Workload) -> None:
    st = start_server(max_wait_us=20_000)
    with connect(st, operator=0) as c:
        seqs = [c.submit(workload.batch(100, first_id=i * 100)) for i in range(5)]
        c.sock.shutdown(socket.SHUT_WR)
        for s in seqs:
            assert len(c.results(s)) == 100
        with pytest.raises(ConnectionError):
            c.recv()


def test_too_many_connections_is_refused(start_server: StartServer) -> None:
    st = start_server(max_connections=2)
    with connect(st) as a, connect(st) as b:
        with pytest.raises(ServerError) as info:
            connect(st)
        assert info.value.code == ErrorCode.TOO_MANY_CONNECTIONS
        assert a.audit().ok and b.audit().ok


def test_a_hook_refusing_an_admin_request_is_reported(start_server: StartServer) -> None:
    hook = freeze_hook()

    def refuse(accounts: np.ndarray) -> None:
        raise ValueError("account is protected")

    hook.freeze = refuse  # type: ignore[method-assign]
    st = start_server(hooks=[hook])
    with connect(st) as c:
        with pytest.raises(ServerError) as info:
            c.freeze(3)
        assert info.value.code == ErrorCode.BAD_FIELD and "account is protected" in info.value.error.message
        c.unfreeze(3)  # the connection and the server go on


def test_welcome_tells_a_reconnecting_operator_where_to_resume_numbering(
    start_server: StartServer, workload: Workload
) -> None:
    st = start_server()
    with connect(st, operator=3) as c:
        assert c.welcome is not None and c.welcome.next_transfer_id == 0
        b = workload.batch(10, first_id=500, operator=3)
        b["transfer_id"] = np.arange(500, 510)
        c.transfer(b)
    with connect(st, operator=3) as c, connect(st, operator=4) as other:
        assert c.welcome is not None and c.welcome.next_transfer_id == 510
        assert other.welcome is not None and other.welcome.next_transfer_id == 0


def test_an_engine_fault_acknowledges_nothing_and_tells_every_client(
    start_server: StartServer, workload: Workload
) -> None:
    st = start_server()
    c, bystander = connect(st, operator=0), connect(st, operator=1)
    assert c.transfer(workload.batch(10, first_id=0)).tolist().count(ResultCode.OK) > 0

    def break_engine() -> None:
        ledger = st.server.ledger
        assert ledger is not None

        def fail(batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("bug in apply")

        ledger.apply = fail  # type: ignore[method-assign]

    st.call(break_engine)
    c.submit(workload.batch(10, first_id=10))
    for client in (c, bystander):
        msg = client.recv()
        assert type(msg) is Error and msg.code == ErrorCode.ENGINE_FAILED, msg
        assert "bug in apply" in msg.message and "unknown outcome" in msg.message
    with pytest.raises(ConnectionError):
        c.recv()
    c.close()
    bystander.close()
