"""An in-process harness for fuzzing: raw bytes into one server connection, no network, no loop.

``Harness.feed(data)`` pushes ``data`` through a real ``_Connection.data_received`` (the frame
reader, the decoder, request handling, batching and the engine) with a stand-in transport that
collects what the server writes, then applies anything queued, as the event loop would. It
checks the invariants every fuzzer shares (``check``): no exception escapes, every reply is a
well-formed server message, every Error carries a known code, and the ledger changes only if
some transfer was answered OK. Used by the hypothesis tests, the corpus replay and the atheris
script (tests/server/fuzz_atheris.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine.codes import ResultCode
from engine.server import Server, ServerConfig, _Connection
from engine.wire import Ack, Codec, Error, ErrorCode, FrameReader, Hello, Results
from tests.support.hooks import blacklist_hook, freeze_hook
from tests.support.servers import TEST_SEED

FUZZ_ACCOUNTS = 5_000
#: Small limits, so "oversized" is cheap to reach.
FUZZ_MAX_FRAME = 64 * 1024
KNOWN_ERRORS = frozenset(e.value for e in ErrorCode)


class _Handle:
    def cancel(self) -> None:
        pass


class _Loop:
    """Records scheduled callbacks; the harness runs the flush itself."""

    def call_soon(self, *_: Any) -> _Handle:
        return _Handle()

    def call_later(self, *_: Any) -> _Handle:
        return _Handle()


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str) -> None:
        return None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed


def fuzz_server(**config: Any) -> Server:
    """A ledger server (freeze and blacklist hooks, small frame limit), not listening."""
    cfg = ServerConfig(
        port=0, accounts=FUZZ_ACCOUNTS, seed=TEST_SEED, max_frame_bytes=FUZZ_MAX_FRAME, max_batch=1024, **config
    )
    server = Server(cfg, hooks=[freeze_hook(), blacklist_hook()])
    server.batcher.loop = _Loop()  # type: ignore[assignment]
    return server


class Harness:
    """One connection to ``server``; ``hello`` says Hello as operator 0 first."""

    def __init__(self, server: Server, *, hello: bool = True) -> None:
        self.server = server
        self.codec = Codec()
        self.transport = _Transport()
        self.conn = _Connection(server)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        if hello:
            self.conn.data_received(self.codec.frame(Hello(0)))
            self.transport.out.clear()

    def feed(self, data: bytes) -> list[Any]:
        """Feed ``data`` as one chunk, run queued batches; the server's replies, decoded."""
        self.conn.data_received(data)
        self.server.drain()
        reader = FrameReader(1 << 30)
        bodies = reader.feed(bytes(self.transport.out))
        self.transport.out.clear()
        assert reader.buffered == 0, "the server wrote a partial frame"
        return [self.codec.server_decoder.decode(b) for b in bodies]

    def close(self) -> None:
        """The transport reports the connection gone, as it does after either side closes."""
        self.conn.connection_lost(None)


def ledger_digest(server: Server, *, ids: bool = True, flags: bool = True) -> str:
    """Digest of balances, plus flags and the idempotency windows' high marks unless left out."""
    ledger = server.ledger
    assert ledger is not None
    h = hashlib.sha256(ledger.balance.tobytes())
    if flags:
        h.update(ledger.flags.tobytes())
    if ids:
        h.update(ledger.ids.high.tobytes())
    return h.hexdigest()


def check(server: Server, data: bytes, *, hello: bool = True) -> list[Any]:
    """Feed ``data`` on a fresh connection and assert the shared invariants; the replies."""
    before = ledger_digest(server)
    unflagged_before = ledger_digest(server, flags=False)
    money_before = ledger_digest(server, ids=False, flags=False)
    harness = Harness(server, hello=hello)
    try:
        replies = harness.feed(data)
    finally:
        harness.close()
    for msg in replies:
        if type(msg) is Error:
            assert msg.code in KNOWN_ERRORS, msg
            assert msg.message, msg
    # A transfer that reaches the ledger consumes its id whatever its result; money moves only
    # for OK ones. An accepted admin request (Ack: freeze, blacklist) changes flags only. A
    # rejected frame (Error) changes nothing at all.
    reached = any(type(m) is Results for m in replies)
    if not reached:
        changed = "ledger changed without a transfer reaching it"
        if any(type(m) is Ack for m in replies):
            assert ledger_digest(server, flags=False) == unflagged_before, f"{changed}: {replies}"
        else:
            assert ledger_digest(server) == before, f"{changed}: {replies}"
    if not any(type(m) is Results and ResultCode.OK in m.codes for m in replies):
        assert ledger_digest(server, ids=False, flags=False) == money_before, f"money moved without an OK: {replies}"
    assert server.ledger is not None and server.ledger.audit().ok
    return replies
