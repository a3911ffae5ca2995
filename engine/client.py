"""A blocking, plain-socket client for the payment server (tests, scripts, the Locust adapter).

One request counter numbers both Submits (``seq``) and admin requests (``req``), so an ``Error``'s
``ref`` names exactly one request. Replies that arrive while waiting for another (pipelined
Submits) are kept and handed out later, so callers can mix pipelining and admin calls.

Not thread-safe: use one Client per thread.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from engine.client_session import HANDSHAKE_REPLIES, ClientHandshake, HandshakeRefused, MissingSecret
from engine.records import TRANSFER_DTYPE
from engine.wire import (
    Ack,
    AuditReply,
    AuditRequest,
    Balance,
    BalanceReply,
    BlacklistAdd,
    BlacklistRemove,
    Codec,
    Error,
    FrameReader,
    Freeze,
    Message,
    Results,
    ServerMessage,
    StatsReply,
    StatsRequest,
    Submit,
    Unfreeze,
    Welcome,
    codes_from_bytes,
)


class ServerError(Exception):
    """The server answered with ``Error``; ``error`` is the message (code, text, ref)."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error

    @property
    def code(self) -> str:
        return self.error.code


class Client:
    """Connect, say Hello as ``operator`` (unless ``hello=False``), then submit and administer.

    Against a server with authentication on, pass ``secret`` (the operator's, or the admin's with
    ``role="admin"``): the client answers the server's Challenge with it. The secret never
    leaves this process; only the HMAC answer is sent.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        operator: int = 0,
        hello: bool = True,
        timeout: float | None = 30.0,
        name: str = "cbdc-bench client",
        rcvbuf: int | None = None,
        secret: str | bytes | None = None,
        role: str = "operator",
    ) -> None:
        self.codec = Codec()
        self.secret = secret
        self.role = role
        self.reader = FrameReader(1 << 30)  # the server is trusted to frame sanely
        self.operator = operator
        self._inbox: collections.deque[ServerMessage] = collections.deque()
        self._next_ref = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connect, so the TCP window is small (slow-consumer tests)
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.welcome: Welcome | None = self.hello(operator, name) if hello else None
        except BaseException:
            self.sock.close()
            raise

    # ---- plumbing ------------------------------------------------------------------------------

    def next_ref(self) -> int:
        self._next_ref += 1
        return self._next_ref

    def send(self, msg: Message) -> None:
        self.sock.sendall(self.codec.frame(msg))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (no framing): for malformed-input tests."""
        self.sock.sendall(data)

    def recv(self) -> ServerMessage:
        """The next server message (kept ones first); ConnectionError if the server closed."""
        if self._inbox:
            return self._inbox.popleft()
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the server closed the connection")
            for body in self.reader.feed(data):
                self._inbox.append(self.codec.server_decoder.decode(body))
            if self._inbox:
                return self._inbox.popleft()

    def wait_for(self, match: Callable[[ServerMessage], bool]) -> ServerMessage:
        """The first message satisfying ``match``; others are kept for later ``recv`` calls."""
        kept: list[ServerMessage] = []
        try:
            while True:
                msg = self._inbox.popleft() if self._inbox else self.recv()
                if match(msg):
                    return msg
                kept.append(msg)
        finally:
            self._inbox.extendleft(reversed(kept))

    def _reply(self, ref: int) -> ServerMessage:
        """The reply to request ``ref``; raises ServerError for an Error about it or the connection."""
        msg = self.wait_for(lambda m: _ref_of(m) == ref or (type(m) is Error and m.ref == -1))
        if type(msg) is Error:
            raise ServerError(msg)
        return msg

    # ---- conversation --------------------------------------------------------------------------

    def hello(self, operator: int, name: str = "cbdc-bench client") -> Welcome:
        """Say Hello as ``operator`` (answering a Challenge with ``secret``); the server's Welcome."""
        handshake = ClientHandshake(operator, name, role=self.role, secret=self.secret)
        self.send(handshake.hello())
        while handshake.welcome is None:
            msg = self.wait_for(lambda m: isinstance(m, HANDSHAKE_REPLIES))
            try:
                reply = handshake.step(msg)
            except MissingSecret:
                raise ServerError(
                    Error("auth_failed", "the server requires authentication: pass secret= (see engine.auth)")
                ) from None
            except HandshakeRefused as exc:
                raise ServerError(exc.error) from None
            if reply is not None:
                self.send(reply)
        self.operator = operator
        return handshake.welcome

    def submit(self, records: np.ndarray) -> int:
        """Send one Submit without waiting; returns its seq (see ``results``)."""
        if records.dtype != TRANSFER_DTYPE:
            raise TypeError(f"records must have TRANSFER_DTYPE, got {records.dtype}")
        seq = self.next_ref()
        self.send(Submit(seq, records.tobytes()))
        return seq

    def results(self, seq: int) -> np.ndarray:
        """Result codes of Submit ``seq`` (waits for them)."""
        msg = self._reply(seq)
        assert type(msg) is Results
        return codes_from_bytes(msg.codes)

    def transfer(self, records: np.ndarray) -> np.ndarray:
        """Submit and wait: one result code per record."""
        return self.results(self.submit(records))

    def _admin(self, make: Callable[[int], Message]) -> ServerMessage:
        ref = self.next_ref()
        self.send(make(ref))
        return self._reply(ref)

    def freeze(self, account: int) -> None:
        self._admin(lambda r: Freeze(r, account))

    def unfreeze(self, account: int) -> None:
        self._admin(lambda r: Unfreeze(r, account))

    def blacklist_add(self, account: int) -> None:
        self._admin(lambda r: BlacklistAdd(r, account))

    def blacklist_remove(self, account: int) -> None:
        self._admin(lambda r: BlacklistRemove(r, account))

    def balance(self, account: int) -> int:
        msg = self._admin(lambda r: Balance(r, account))
        assert type(msg) is BalanceReply
        return msg.balance_fen

    def audit(self) -> AuditReply:
        msg = self._admin(lambda r: AuditRequest(r))
        assert type(msg) is AuditReply
        return msg

    def stats(self) -> dict[str, Any]:
        msg = self._admin(lambda r: StatsRequest(r))
        assert type(msg) is StatsReply
        return msg.stats

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ref_of(msg: ServerMessage) -> int | None:
    match msg:
        case Results(seq=seq):
            return seq
        case Error(ref=ref) | Ack(req=ref) | BalanceReply(req=ref) | AuditReply(req=ref) | StatsReply(req=ref):
            return ref
    return None


def parse_host(host: str | None) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (or ``HOST:PORT``) -> (host, port), with a clear error otherwise."""
    if not host:
        raise ValueError("no host: pass --host tcp://127.0.0.1:PORT (the port `cbdc-bench serve` printed)")
    parts = urlsplit(host if "://" in host else f"tcp://{host}")
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        raise ValueError(f"host must look like tcp://127.0.0.1:7400, got {host!r}")
    return parts.hostname, parts.port
