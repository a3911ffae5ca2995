"""Handshake and authentication: Hello, Challenge, Authenticate, Welcome (see ``engine.server``).

``Session`` is one connection's state in the handshake; ``Handshake`` is the server's side of it,
answering through the connection's own reply methods.
"""

from __future__ import annotations

from typing import Protocol

from engine.auth import ROLE_ADMIN, ROLE_OPERATOR, Secrets, new_nonce
from engine.ledger import Ledger
from engine.server.config import SERVER_NAME, ServerConfig
from engine.server.stats import ConnectionLoad, ServerStats
from engine.wire import PROTOCOL_VERSION, Authenticate, Challenge, ErrorCode, Hello, Message, Welcome


class Session:
    """Who is on one connection: set by Hello (after authentication, when it is on)."""

    __slots__ = ("admin", "claimed_operator", "nonce", "operator")

    def __init__(self) -> None:
        self.operator = -1  # set by Hello (after authentication, when it is on)
        self.admin = False  # authenticated with the admin secret
        self.claimed_operator = -1  # Hello's operator while its Challenge is outstanding
        self.nonce = b""

    @property
    def welcomed(self) -> bool:
        return self.operator >= 0


class Peer(Protocol):
    """The side of a connection the handshake uses (``engine.server.connection.Connection``)."""

    session: Session
    load: ConnectionLoad

    def send(self, msg: Message) -> None: ...
    def error(self, code: ErrorCode, message: str, ref: int = -1) -> None: ...
    def close(self) -> None: ...


class Handshake:
    """The server's side of the handshake; ``secrets`` None = authentication off."""

    def __init__(
        self, config: ServerConfig, secrets: Secrets | None, ledger: Ledger | None, stats: ServerStats
    ) -> None:
        self.config = config
        self.secrets = secrets
        self.ledger = ledger
        self.stats = stats

    def require_hello(self, conn: Peer, ref: int) -> bool:
        """True if ``conn`` completed the handshake; otherwise answers with the Error that says so."""
        if conn.session.operator >= 0:
            return True
        if self.secrets is not None:
            self._auth_failed(conn, "authentication is required: send Hello, answer its Challenge with Authenticate")
            return False
        conn.error(ErrorCode.HELLO_REQUIRED, "send Hello(operator) first and wait for Welcome; nothing was done", ref)
        return False

    def _auth_failed(self, conn: Peer, why: str) -> None:
        self.stats.counters["auth_failures"] += 1
        conn.error(ErrorCode.AUTH_FAILED, f"{why}; nothing was done. Connection closed.")
        conn.close()

    def hello(self, conn: Peer, msg: Hello) -> None:
        cfg = self.config
        session = conn.session
        if self.secrets is not None and session.nonce:
            self._auth_failed(conn, "Hello sent twice: answer the Challenge with Authenticate")
            return
        if session.operator >= 0:
            conn.error(
                ErrorCode.HELLO_REQUIRED,
                f"Hello already received (operator {session.operator}); send it once per connection",
            )
            return
        if msg.protocol != PROTOCOL_VERSION:
            conn.error(
                ErrorCode.UNSUPPORTED_PROTOCOL,
                f"protocol {msg.protocol} is not supported; this server speaks protocol {PROTOCOL_VERSION}. "
                f"Closing the connection.",
            )
            conn.close()
            return
        if not 0 <= msg.operator < cfg.operators:
            conn.error(
                ErrorCode.BAD_FIELD,
                f"Hello: operator {msg.operator} is out of range; this server has operators 0..{cfg.operators - 1}",
            )
            return
        if self.secrets is not None:
            session.claimed_operator = msg.operator
            session.nonce = new_nonce()
            conn.send(Challenge(session.nonce))
            return
        session.operator = msg.operator
        self._welcome(conn)

    def authenticate(self, conn: Peer, msg: Authenticate) -> None:
        session = conn.session
        if self.secrets is None:
            conn.error(
                ErrorCode.HELLO_REQUIRED,
                "authentication is off on this server: Hello alone is answered with Welcome; nothing done",
            )
            return
        if not session.nonce:
            self._auth_failed(conn, "Authenticate without an outstanding Challenge: send Hello first, once")
            return
        nonce, session.nonce = session.nonce, b""  # one answer per nonce
        role = msg.role.encode()
        if role not in (ROLE_OPERATOR, ROLE_ADMIN) or not self.secrets.verify(
            role, session.claimed_operator, nonce, msg.answer
        ):
            self._auth_failed(
                conn,
                f"wrong credentials for role {msg.role!r} as operator {session.claimed_operator} (the answer must "
                f"be engine.auth.respond(secret, nonce, role, operator) with that operator's or the admin's secret)",
            )
            return
        session.admin = role == ROLE_ADMIN
        session.operator = session.claimed_operator
        self.stats.counters["auth_" + msg.role] += 1
        self._welcome(conn)

    def _welcome(self, conn: Peer) -> None:
        cfg = self.config
        session = conn.session
        if not session.admin:
            self.stats.submitter_joined(conn.load, session.operator)
        owners = None if self.ledger is None else self.ledger.owners
        operator = session.operator
        conn.send(
            Welcome(
                server=SERVER_NAME,
                protocol=PROTOCOL_VERSION,
                accounts=cfg.accounts,
                profile="echo" if cfg.echo else cfg.profile,
                max_batch=cfg.max_batch,
                max_frame_bytes=cfg.max_frame_bytes,
                queue_limit=cfg.queue_limit,
                max_wait_us=round(cfg.flush_wait_s * 1e6),
                echo=cfg.echo,
                next_transfer_id=0 if self.ledger is None else int(self.ledger.ids.high[operator]) + 1,
                auth=self.secrets is not None,
                role="admin" if session.admin else "operator",
                ownership=owners is not None,
                owned_from=0 if owners is None else int(owners[operator]),
                owned_to=0 if owners is None else int(owners[operator + 1]),
            ),
        )
