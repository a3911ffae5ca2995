"""Connections that never authenticate, or hold half frames, cannot keep operators out or take
unbounded memory (issue 13, item 5)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from engine.server import ServerThread
from engine.wire import HEADER, PROTOCOL_VERSION, Codec, ErrorCode, Hello
from loadgen.generator.workload import Workload
from tests.support.servers import StartServer, connect

MAX_FRAME = 1 << 16


@pytest.fixture
def raw_sockets() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_idle_and_half_handshaken_connections_do_not_keep_an_operator_out(
    start_server: StartServer, workload: Workload, raw_sockets: list[socket.socket]
) -> None:
    st: ServerThread = start_server(max_connections=16, max_unauthenticated=4)
    hello = Codec().frame(Hello(PROTOCOL_VERSION, 0))
    for i in range(16):  # as many as max_connections: idle ones, and ones stopping inside their Hello
        s = socket.create_connection(st.address)
        if i % 2:
            s.sendall(hello[: len(hello) // 2])
        raw_sockets.append(s)
    _wait_for(lambda: st.call(lambda: st.server.counters["connections_total"]) >= 16, "connections not accepted")
    with connect(st, operator=1) as c:
        assert len(c.transfer(workload.batch(20, first_id=0, operator=1))) == 20
    waiting = st.call(lambda: sum(not k.session.welcomed for k in st.server._connections))
    assert waiting <= 4
    assert st.call(lambda: st.server.counters["unauthenticated_evicted"]) >= 16 - 4


def test_half_frames_of_all_connections_stay_within_the_total_bound(
    start_server: StartServer, workload: Workload
) -> None:
    bound = 4 * MAX_FRAME
    st: ServerThread = start_server(max_batch=256, max_frame_bytes=MAX_FRAME, max_partial_frame_bytes=bound)
    half = HEADER.pack(MAX_FRAME) + b"\x00" * (MAX_FRAME // 2)
    clients = [connect(st, operator=0) for _ in range(12)]  # 12 half frames: 1.5x the bound
    try:
        for c in clients:
            c.send_raw(half)

        def refused() -> int:
            return int(st.call(lambda: st.server.metrics.errors[ErrorCode.PARTIAL_FRAMES_FULL.value]))

        _wait_for(lambda: refused() >= 12 - bound // len(half), "no connection was refused at the total bound")
        held, counted = st.call(
            lambda: (sum(k.reader.buffered for k in st.server._connections), st.server.metrics.partial_frame_bytes)
        )
        assert held == counted <= bound
        with connect(st, operator=1) as c:  # whole frames still go through
            assert len(c.transfer(workload.batch(20, first_id=0, operator=1))) == 20
    finally:
        for c in clients:
            c.close()
    _wait_for(
        lambda: st.call(lambda: st.server.metrics.partial_frame_bytes) == 0, "bytes of closed frames still counted"
    )


def _read_frame(s: socket.socket) -> bytes:
    s.settimeout(10)
    head = b""
    while len(head) < HEADER.size:
        chunk = s.recv(HEADER.size - len(head))
        assert chunk, "the server closed the connection"
        head += chunk
    (n,) = HEADER.unpack(head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        assert chunk, "the server closed the connection"
        body += chunk
    return body


def test_a_churning_address_evicts_its_own_connections_not_a_slow_handshake(
    start_server: StartServer, raw_sockets: list[socket.socket]
) -> None:
    """Closing the oldest waiting connection let one client opening connections as fast as it can
    evict every other client before its Hello arrived (issue 13); now the busiest address pays."""
    st: ServerThread = start_server(max_connections=64, max_unauthenticated=4)
    slow = socket.create_connection(st.address, source_address=("127.0.0.1", 0))
    raw_sockets.append(slow)
    for _ in range(40):  # a churner on another loopback address, far past max_unauthenticated
        s = socket.create_connection(st.address, source_address=("127.0.0.2", 0))
        raw_sockets.append(s)
    _wait_for(lambda: st.call(lambda: st.server.counters["connections_total"]) >= 41, "connections not accepted")
    _wait_for(lambda: st.call(lambda: st.server.counters["unauthenticated_evicted"]) >= 40 + 1 - 4, "no eviction")
    slow.sendall(Codec().frame(Hello(0)))  # the slow client's Hello, long after connecting
    assert b"Welcome" in _read_frame(slow)
    sources = st.call(lambda: sorted(k.source for k in st.server._connections if not k.closing))
    assert sources.count("127.0.0.1") == 1 and sources.count("127.0.0.2") <= 4


def test_connect_rate_per_source_refuses_a_burst_from_one_address(
    start_server: StartServer, workload: Workload, raw_sockets: list[socket.socket]
) -> None:
    st: ServerThread = start_server(max_unauthenticated=4, connect_rate_per_source=0.2)
    # A burst of 12 against a bucket of 4 refilling at 0.2/s (slow accepts on a busy machine refill little).
    raw_sockets.extend(socket.create_connection(st.address, source_address=("127.0.0.3", 0)) for _ in range(12))
    _wait_for(lambda: st.call(lambda: st.server.counters["connections_total"]) >= 12, "connections not accepted")
    limited = st.call(lambda: st.server.counters["connections_rate_limited"])
    assert 12 - 4 - 2 <= limited <= 12 - 4  # at most 2 tokens refilled unless accepting took 10 s
    assert b"connect-rate-per-source" in _read_frame(raw_sockets[-1])  # the last of the burst was refused
    with connect(st, operator=1) as c:  # another address is not limited
        assert len(c.transfer(workload.batch(20, first_id=0, operator=1))) == 20
