"""Operator and admin authentication on the server, account ownership, and authenticated load runs."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import uvloop

from engine.auth import ROLE_OPERATOR, Secrets, generate_secrets, respond
from engine.client import ServerError
from engine.codes import ResultCode
from engine.server import ServerThread
from engine.wire import Authenticate, Challenge, Codec, Error, ErrorCode, FrameReader, Hello, Submit
from loadgen.generator.gateway import LoadConfig
from loadgen.generator.workload import Workload
from loadgen.harness.measured import measure
from tests.support.hooks import freeze_hook
from tests.support.servers import StartServer, connect

OPERATORS = 4


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.toml"
    generate_secrets(path, OPERATORS)
    return path


def _auth_server(start_server: StartServer, secrets_file: Path) -> ServerThread:
    return start_server(hooks=[freeze_hook()], secrets=str(secrets_file), operators=OPERATORS, max_wait_us=1000)


def _ledger_digest(st: ServerThread) -> str:
    def digest() -> str:
        ledger = st.server.ledger
        assert ledger is not None
        return hashlib.sha256(ledger.balance.tobytes() + ledger.flags.tobytes()).hexdigest()

    return st.call(digest)  # type: ignore[no-any-return]


def _secret(secrets_file: Path, operator: int) -> bytes:
    key = Secrets.load(secrets_file).secret(ROLE_OPERATOR, operator)
    assert key is not None
    return key


def _raw(st: ServerThread) -> tuple[socket.socket, Codec, FrameReader]:
    sock = socket.create_connection(st.address, timeout=10)
    return sock, Codec(), FrameReader()


def _read_until_closed(sock: socket.socket, codec: Codec, reader: FrameReader) -> list[object]:
    """Every message the server sends until it closes the connection."""
    got: list[object] = []
    while data := sock.recv(1 << 16):
        got += [codec.server_decoder.decode(b) for b in reader.feed(data)]
    return got


def test_operator_authenticates_and_debits_only_its_own_accounts(
    start_server: StartServer, secrets_file: Path, workload: Workload
) -> None:
    st = _auth_server(start_server, secrets_file)
    with connect(st, operator=2, secret=_secret(secrets_file, 2)) as c:
        w = c.welcome
        assert w is not None and w.auth and w.role == "operator" and w.ownership
        assert 0 < w.owned_from < w.owned_to <= w.accounts
        mine = workload.batch(300, first_id=0, operator=2, payer_range=(w.owned_from, w.owned_to))
        assert ResultCode.FORBIDDEN_PAYER not in c.transfer(mine)
        theirs = workload.batch(300, first_id=300, operator=2)
        outside = (theirs["payer"] < w.owned_from) | (theirs["payer"] >= w.owned_to)
        codes = c.transfer(theirs)
        valid = (theirs["amount_fen"] > 0) & (theirs["payee"] < w.accounts)
        assert (codes[outside & valid] == ResultCode.FORBIDDEN_PAYER).all()
        assert c.balance(w.owned_from) >= 0
        before = _ledger_digest(st)
        for request in (lambda: c.freeze(w.owned_from), c.audit, lambda: c.balance(w.owned_to)):
            with pytest.raises(ServerError) as exc:
                request()
            assert exc.value.code == ErrorCode.NOT_PERMITTED
        assert _ledger_digest(st) == before
        own = c.stats()  # the connection stays usable, and shows this operator its own figures only
        assert own == {
            "scope": "operator",
            "operator": 2,
            "connections": 1,
            "queued_transfers": 0,
            "next_transfer_id": int(st.call(lambda: st.server.ledger.ids.high[2])) + 1,  # type: ignore[union-attr]
        }


def test_admin_administers_and_never_submits(start_server: StartServer, secrets_file: Path, workload: Workload) -> None:
    st = _auth_server(start_server, secrets_file)
    admin_secret = Secrets.load(secrets_file).secret(b"admin", 0)
    with connect(st, operator=0, secret=admin_secret, role="admin") as c:
        assert c.welcome is not None and c.welcome.role == "admin"
        c.freeze(17)
        assert c.audit().ok
        assert c.stats()["auth"]["operator_logins"] == 0  # the global figures are the admin's
        with pytest.raises(ServerError) as exc:
            c.transfer(workload.batch(10, first_id=0, operator=0))
        assert exc.value.code == ErrorCode.NOT_PERMITTED
    assert st.call(lambda: bool(st.server.ledger.flags[17]))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "answer",
    [
        "wrong-secret",  # a secret that is not this operator's
        "other-operator",  # operator 1's own secret, claiming to be operator 0
        "admin-role-with-operator-secret",
        "unknown-role",
    ],
)
def test_wrong_credentials_are_refused_and_the_connection_closed(
    start_server: StartServer, secrets_file: Path, workload: Workload, answer: str
) -> None:
    st = _auth_server(start_server, secrets_file)
    before = _ledger_digest(st)
    sock, codec, reader = _raw(st)
    with sock:
        sock.sendall(codec.frame(Hello(0)))
        data = sock.recv(1 << 16)
        (challenge,) = [codec.server_decoder.decode(b) for b in reader.feed(data)]
        assert type(challenge) is Challenge and len(challenge.nonce) == 32
        role, key, claimed = "operator", _secret(secrets_file, 0), 0
        if answer == "wrong-secret":
            key = b"x" * 32
        elif answer == "other-operator":
            key = _secret(secrets_file, 1)
        elif answer == "admin-role-with-operator-secret":
            role = "admin"
        else:
            role = "root"
        reply = Authenticate(role, respond(key, challenge.nonce, role.encode(), claimed))
        # The Submit right behind the wrong answer must not be applied.
        records = workload.batch(20, first_id=0, operator=0)
        sock.sendall(codec.frame(reply) + codec.frame(Submit(1, records.tobytes())))
        got = _read_until_closed(sock, codec, reader)
    assert len(got) == 1 and type(got[0]) is Error and got[0].code == ErrorCode.AUTH_FAILED, got
    assert _ledger_digest(st) == before
    assert st.call(lambda: st.server.counters["auth_failures"]) == 1


def test_missing_credentials_and_replayed_answers_are_refused(
    start_server: StartServer, secrets_file: Path, workload: Workload
) -> None:
    st = _auth_server(start_server, secrets_file)
    before = _ledger_digest(st)
    # A client that skips the answer and submits: refused and closed, nothing applied.
    sock, codec, reader = _raw(st)
    with sock:
        records = workload.batch(20, first_id=0, operator=0)
        sock.sendall(codec.frame(Hello(0)) + codec.frame(Submit(1, records.tobytes())))
        got = _read_until_closed(sock, codec, reader)
    assert [type(m) for m in got] == [Challenge, Error] and got[1].code == ErrorCode.AUTH_FAILED  # type: ignore[attr-defined]
    # An answer captured from one connection does not open another (fresh nonce per connection).
    key = _secret(secrets_file, 0)
    sock1, codec1, reader1 = _raw(st)
    sock2, codec2, reader2 = _raw(st)
    with sock1, sock2:
        sock1.sendall(codec1.frame(Hello(0)))
        (ch1,) = [codec1.server_decoder.decode(b) for b in reader1.feed(sock1.recv(1 << 16))]
        sock2.sendall(codec2.frame(Hello(0)))
        (ch2,) = [codec2.server_decoder.decode(b) for b in reader2.feed(sock2.recv(1 << 16))]
        assert ch1.nonce != ch2.nonce  # type: ignore[union-attr]
        sock2.sendall(codec2.frame(Authenticate("operator", respond(key, ch1.nonce, ROLE_OPERATOR, 0))))  # type: ignore[union-attr]
        got = _read_until_closed(sock2, codec2, reader2)
    assert type(got[0]) is Error and got[0].code == ErrorCode.AUTH_FAILED
    # The client library refuses to connect without a secret, with a clear message.
    with pytest.raises(ServerError, match="requires authentication"):
        connect(st, operator=0)
    assert _ledger_digest(st) == before


def test_without_secrets_nothing_changes(start_server: StartServer) -> None:
    st = start_server()
    with connect(st) as c:
        assert c.welcome is not None and not c.welcome.auth and not c.welcome.ownership
        c.send(Authenticate("operator", b"x"))
        msg = c.recv()
        assert type(msg) is Error and msg.code == ErrorCode.HELLO_REQUIRED
        assert c.audit().ok  # admin requests open to all, as before
        assert st.server.startup_notes()[-1].startswith("authentication off")


def test_authenticated_load_run_pays_from_own_ranges(start_server: StartServer, secrets_file: Path) -> None:
    st = start_server(secrets=str(secrets_file), operators=2)
    # The same file serves the server, the gateways and the admin connection.
    config = LoadConfig(
        port=st.address[1], rate_tps=6_000, seconds=0.6, warmup=0.2, operators=2, pool=2_000, secrets=str(secrets_file)
    )
    result = uvloop.run(measure(config, kind="load"))
    assert result.failures == []
    codes = result.codes
    assert codes.get("forbidden_payer", 0) == 0
    assert codes.get("ok", 0) > 0
    assert result.audit is not None and result.audit.ok
    counters = st.call(lambda: dict(st.server.counters))  # on the server's loop, not racing it
    assert counters["auth_operator"] == 2 and counters["auth_admin"] == 1
    # Without the secrets, the generator is refused with a clear error.
    bad = LoadConfig(port=st.address[1], rate_tps=1_000, seconds=0.1, warmup=0.0, operators=1)
    with pytest.raises(Exception, match="requires authentication"):
        uvloop.run(measure(bad, kind="load"))
