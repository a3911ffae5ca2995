"""Hostile input, fuzzed: random, truncated, oversized and type-confused frames.

Most examples run in process (``tests.support.fuzz``: the real connection, decoder, handlers and
ledger, no sockets), where thousands of cases take seconds; a smaller set goes over TCP to a
running server. Every case must leave the server answering, with a specific Error for what it
rejects and the ledger unchanged unless a transfer was answered OK. Inputs that once broke
something live in tests/server/fuzz_corpus/ and are replayed by ``test_corpus_replays_cleanly``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.client import Client
from engine.records import TRANSFER_DTYPE
from engine.server import Server, ServerThread
from engine.wire import (
    CLIENT_TAGS,
    HEADER,
    AuditReply,
    AuditRequest,
    Codec,
    Error,
    ErrorCode,
    FrameReader,
    Hello,
    Results,
)
from tests.support.fuzz import FUZZ_MAX_FRAME, check, fuzz_server, ledger_digest

CORPUS = Path(__file__).parent / "fuzz_corpus"
EXAMPLES = 1000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield fuzz_server()


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=200),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
_tags = st.sampled_from(sorted(CLIENT_TAGS)) | st.text(max_size=12)


@st.composite
def _records(draw: st.DrawFn) -> bytes:
    """A transfers blob: whole or broken records with arbitrary field values."""
    n = draw(st.integers(0, 6))
    raw = draw(st.binary(min_size=n * TRANSFER_DTYPE.itemsize, max_size=n * TRANSFER_DTYPE.itemsize))
    records = np.frombuffer(raw, dtype=TRANSFER_DTYPE).copy()
    if n and draw(st.booleans()):
        records["operator"] = 0  # past the operator check, into the ledger's own checks
        records["payer"] %= 6_000
        records["payee"] %= 6_000
    blob = records.tobytes()
    return blob[: draw(st.integers(0, len(blob)))] if draw(st.booleans()) else blob


_confused = st.builds(lambda tag, fields: msgspec.msgpack.encode([tag, *fields]), _tags, st.lists(_values, max_size=4))
_submits = st.builds(
    lambda seq, blob, extra: msgspec.msgpack.encode(["Submit", seq, blob, *extra]),
    st.integers(-(2**63), 2**64 - 1),
    _records(),
    st.lists(_values, max_size=1),
)


@FUZZ
@given(body=st.binary(max_size=400), hello=st.booleans())
def test_random_bodies(server: Server, body: bytes, hello: bool) -> None:
    replies = check(server, _frame(body), hello=hello)
    assert len(replies) >= 1  # every complete frame is answered
    try:
        msgspec.msgpack.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        assert [type(m) for m in replies] == [Error] and replies[0].code == ErrorCode.MALFORMED_FRAME


@FUZZ
@given(body=_confused | _submits, hello=st.booleans())
def test_type_confused_messages(server: Server, body: bytes, hello: bool) -> None:
    replies = check(server, _frame(body), hello=hello)
    assert replies or body.startswith(msgspec.msgpack.encode(["Hello"])[:7])
    errors = [m for m in replies if type(m) is Error]
    if not hello and errors and b"Hello" not in body[:8]:
        assert errors[0].code in {
            ErrorCode.HELLO_REQUIRED,
            ErrorCode.BAD_FIELD,
            ErrorCode.MALFORMED_FRAME,
            ErrorCode.UNKNOWN_MESSAGE,
        }


@FUZZ
@given(
    frames=st.lists(_confused | _submits | st.binary(max_size=60), min_size=1, max_size=5),
    cut=st.integers(0, 10_000),
)
def test_truncated_streams(server: Server, frames: list[bytes], cut: int) -> None:
    """A stream cut anywhere, then the peer goes away: complete frames answered, the rest dropped."""
    stream = b"".join(_frame(f) for f in frames)
    check(server, stream[: cut % (len(stream) + 1)])


@FUZZ
@given(length=st.integers(FUZZ_MAX_FRAME + 1, 2**32 - 1), prefix=st.lists(_submits, max_size=2))
def test_oversized_headers(server: Server, length: int, prefix: list[bytes]) -> None:
    stream = b"".join(_frame(f) for f in prefix) + struct.pack("<I", length) + b"\x00" * 8
    replies = check(server, stream)
    assert type(replies[-1]) is Error and replies[-1].code == ErrorCode.FRAME_TOO_LARGE


# ---- over TCP, against a running server ------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> Iterator[ServerThread]:
    from tests.support.hooks import blacklist_hook, freeze_hook
    from tests.support.servers import TEST_SEED

    st_ = ServerThread(
        __import__("engine.server", fromlist=["ServerConfig"]).ServerConfig(
            port=0, accounts=5_000, seed=TEST_SEED, max_frame_bytes=FUZZ_MAX_FRAME, max_batch=1024
        ),
        hooks=[freeze_hook(), blacklist_hook()],
    )
    with st_:
        yield st_


def _exchange(address: tuple[str, int], data: bytes) -> list[Any]:
    """Hello, ``data``, then an audit sentinel; replies up to the sentinel's (or the close).

    An audit first applies everything queued, so the Results of fuzzed Submits precede its reply.
    """
    codec = Codec()
    reader = FrameReader(1 << 30)
    got: list[Any] = []
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(codec.frame(Hello(0)) + data + codec.frame(AuditRequest(2**62)))
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return got
            got += [codec.server_decoder.decode(b) for b in reader.feed(chunk)]
            if any(type(m) is AuditReply and m.req == 2**62 for m in got):
                return got


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(_confused | _submits | st.binary(max_size=80), min_size=1, max_size=4))
def test_live_server_survives_fuzzed_frames(live: ServerThread, frames: list[bytes]) -> None:
    before = live.call(lambda: ledger_digest(live.server))
    got = _exchange(live.address, b"".join(_frame(f) for f in frames))
    assert all(m.code in {e.value for e in ErrorCode} for m in got if type(m) is Error)
    if not any(type(m) is Results for m in got):
        assert live.call(lambda: ledger_digest(live.server)) == before
    with Client(*live.address, operator=1) as c:  # still serving
        assert c.audit().ok


# ---- regression corpus -----------------------------------------------------------------------


def _corpus() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*.bin"))


@pytest.mark.parametrize("case", _corpus(), ids=lambda p: p.stem)
def test_corpus_replays_cleanly(server: Server, live: ServerThread, case: Path) -> None:
    """Each file: raw bytes a client sent after Hello that once broke (or probed) the server."""
    data = case.read_bytes()
    check(server, data)
    _exchange(live.address, data)
    with Client(*live.address, operator=1) as c:
        assert c.audit().ok
