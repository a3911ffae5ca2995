"""Malformed input: each case gets its specific Error (or a clean close), nothing of it is applied,
and another client keeps being served throughout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest

from engine.client import Client, ServerError
from engine.server import ServerThread
from engine.wire import HEADER, PROTOCOL_VERSION, Codec, Error, ErrorCode, Hello, Results, Submit
from loadgen.generator.workload import Workload
from tests.support.servers import StartServer, connect

MAX_FRAME = 1 << 16
MAX_BATCH = 256


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def _enc(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


@pytest.fixture
def server(start_server: StartServer) -> ServerThread:
    return start_server(max_batch=MAX_BATCH, queue_limit=4 * MAX_BATCH, max_frame_bytes=MAX_FRAME)


@pytest.fixture
def bystander(server: ServerThread) -> Iterator[Client]:
    """A well-behaved client on another connection that must keep working."""
    with connect(server, operator=9) as c:
        yield c


def _bystander_works(c: Client, workload: Workload, first_id: int) -> None:
    b = workload.batch(20, first_id=first_id, operator=9)
    assert len(c.transfer(b)) == 20


def _applied(server: ServerThread) -> int:
    return int(server.call(lambda: server.server.counters["transfers"]))


def _expect_error(c: Client, code: ErrorCode) -> Error:
    msg = c.recv()
    assert type(msg) is Error, msg
    assert msg.code == code, msg
    assert len(msg.message) > 20  # says what was wrong and what to do
    return msg


# (name, frame bytes sent after Hello, expected error, ref, connection closed afterwards)
CASES = [
    ("not msgpack", _frame(b"\xc1\x00\x01"), ErrorCode.MALFORMED_FRAME, -1, False),
    ("empty body", _frame(b""), ErrorCode.MALFORMED_FRAME, -1, False),
    ("truncated msgpack", _frame(_enc(["Submit", 7, b"x" * 48])[:-10]), ErrorCode.MALFORMED_FRAME, -1, False),
    ("trailing bytes", _frame(_enc(["AuditRequest", 7]) + b"\x00"), ErrorCode.MALFORMED_FRAME, -1, False),
    ("map body", _frame(_enc({"Submit": 1})), ErrorCode.MALFORMED_FRAME, -1, False),
    ("untagged array", _frame(_enc([1, 2, 3])), ErrorCode.MALFORMED_FRAME, -1, False),
    ("unknown tag", _frame(_enc(["Transfer", 7, b""])), ErrorCode.UNKNOWN_MESSAGE, 7, False),
    ("server-only tag", _frame(_enc(["Welcome", "x", 1, 1, "p", 1, 1])), ErrorCode.UNKNOWN_MESSAGE, -1, False),
    ("seq of wrong type", _frame(_enc(["Submit", "seven", b""])), ErrorCode.BAD_FIELD, -1, False),
    ("transfers of wrong type", _frame(_enc(["Submit", 7, [1, 2, 3]])), ErrorCode.BAD_FIELD, 7, False),
    ("missing field", _frame(_enc(["Balance", 7])), ErrorCode.BAD_FIELD, 7, False),
    ("account of wrong type", _frame(_enc(["Freeze", 7, 1.5])), ErrorCode.BAD_FIELD, 7, False),
    ("second hello", _frame(_enc(["Hello", 1])), ErrorCode.HELLO_REQUIRED, -1, False),
    ("oversized frame", HEADER.pack(MAX_FRAME + 1) + b"\x00" * 100, ErrorCode.FRAME_TOO_LARGE, -1, True),
]


@pytest.mark.parametrize(("name", "data", "code", "ref", "closes"), CASES, ids=[c[0] for c in CASES])
def test_malformed_frame_gets_its_error(
    server: ServerThread,
    bystander: Client,
    workload: Workload,
    name: str,
    data: bytes,
    code: ErrorCode,
    ref: int,
    closes: bool,
) -> None:
    before = _applied(server)
    with connect(server, operator=1) as c:
        c.send_raw(data)
        err = _expect_error(c, code)
        assert err.ref == ref
        _bystander_works(bystander, workload, first_id=0)
        if closes:
            with pytest.raises(ConnectionError):
                c.recv()
        else:  # framing intact: the same connection goes on working
            b = workload.batch(5, first_id=0, operator=1)
            assert len(c.transfer(b)) == 5
    assert _applied(server) == before + 20 + (0 if closes else 5)


def _records(workload: Workload, n: int, operator: int) -> np.ndarray:
    return workload.batch(n, first_id=0, operator=operator)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("partial record", ErrorCode.BAD_RECORDS),
        ("too many", ErrorCode.BATCH_TOO_LARGE),
        ("operator", ErrorCode.OPERATOR_MISMATCH),
    ],
)
def test_invalid_submit_is_refused_whole(
    server: ServerThread, bystander: Client, workload: Workload, name: str, code: ErrorCode
) -> None:
    with connect(server, operator=1) as c:
        if name == "partial record":
            blob = _records(workload, 3, 1).tobytes()[:-1]
        elif name == "too many":
            blob = _records(workload, MAX_BATCH + 1, 1).tobytes()
        else:
            r = _records(workload, 10, 1)
            r["operator"][7] = 2
            blob = r.tobytes()
        before = _applied(server)
        c.send(Submit(41, blob))
        err = _expect_error(c, code)
        assert err.ref == 41
        _bystander_works(bystander, workload, first_id=100)
        assert _applied(server) == before + 20  # only the bystander's transfers
        assert c.audit().ok


def test_submit_before_hello(server: ServerThread, bystander: Client, workload: Workload) -> None:
    host, port = server.address
    with Client(host, port, hello=False) as c:
        c.send(Submit(5, _records(workload, 4, 0).tobytes()))
        assert _expect_error(c, ErrorCode.HELLO_REQUIRED).ref == 5
        c.send(Submit(6, b""))
        assert _expect_error(c, ErrorCode.HELLO_REQUIRED).ref == 6
        assert _applied(server) == 0
        c.hello(0)
        assert len(c.transfer(_records(workload, 4, 0))) == 4
    _bystander_works(bystander, workload, first_id=200)


def test_hello_with_bad_protocol_or_operator(server: ServerThread) -> None:
    host, port = server.address
    with Client(host, port, hello=False) as c:
        with pytest.raises(ServerError) as info:
            c.hello(70)  # the test server has operators 0..63
        assert info.value.code == ErrorCode.BAD_FIELD
        c.hello(3)  # still usable
    with Client(host, port, hello=False) as c:
        c.send(Hello(0, "old", PROTOCOL_VERSION + 1))
        _expect_error(c, ErrorCode.UNSUPPORTED_PROTOCOL)
        with pytest.raises(ConnectionError):
            c.recv()


def test_frames_before_an_oversized_one_are_still_answered(server: ServerThread, workload: Workload) -> None:
    with connect(server, operator=1) as c:
        good = c.codec.frame(Submit(3, _records(workload, 8, 1).tobytes()))
        c.send_raw(good + HEADER.pack(MAX_FRAME * 2))
        first = c.recv()
        assert type(first) is Results and first.seq == 3 and len(first.codes) == 8
        _expect_error(c, ErrorCode.FRAME_TOO_LARGE)


@pytest.mark.parametrize("cut", [2, HEADER.size, HEADER.size + 100])
def test_client_disconnecting_mid_frame(server: ServerThread, bystander: Client, workload: Workload, cut: int) -> None:
    data = Codec().frame(Submit(1, _records(workload, 10, 1).tobytes()))
    with connect(server, operator=1) as c:
        c.send_raw(data[:cut])
    deadline = time.monotonic() + 5
    while server.call(lambda: server.server.counters["partial_frames_dropped"]) < 1:
        assert time.monotonic() < deadline, "server did not notice the dropped frame"
        time.sleep(0.01)
    assert _applied(server) == 0
    _bystander_works(bystander, workload, first_id=300)
    assert server.call(lambda: len(server.server._connections)) == 1
    assert bystander.audit().ok


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "in-a-tagged-array"])
def test_deeply_nested_msgpack_is_a_protocol_error_after_queued_results(
    server: ServerThread, bystander: Client, workload: Workload, wrapped: bool
) -> None:
    """Nesting deep enough to exhaust the decoder's recursion limit (issue 13, item 6): the
    Submit sent before it is answered, then MALFORMED_FRAME, and the connection keeps working."""
    depth = MAX_FRAME - 64
    nested = b"\x91" * depth + b"\x00"  # [[[...[0]...]]]: a one-element array, `depth` times
    body = (b"\x93" + _enc("Submit") + _enc(7) + nested) if wrapped else nested
    with connect(server, operator=1) as c:
        good = c.codec.frame(Submit(3, _records(workload, 8, 1).tobytes()))
        c.send_raw(good + _frame(body))
        first = c.recv()
        assert type(first) is Results and first.seq == 3 and len(first.codes) == 8
        err = _expect_error(c, ErrorCode.MALFORMED_FRAME)
        assert "nest" in err.message
        _bystander_works(bystander, workload, first_id=0)
        b = workload.batch(5, first_id=100, operator=1)
        assert len(c.transfer(b)) == 5
