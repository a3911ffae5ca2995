"""The client side of the handshake (Hello, Challenge, Authenticate, Welcome) as pure message steps.

No I/O here: ``ClientHandshake`` says what to send first and, for each server message, what to
answer, so the blocking client (``engine.client``) and the asyncio gateways and admin connection
(``loadgen``) share one implementation and differ only in how they move bytes.
"""

from __future__ import annotations

from engine.auth import respond
from engine.wire import Authenticate, Challenge, Error, Hello, ServerMessage, Welcome

#: The server messages a client waits for while its handshake is under way.
HANDSHAKE_REPLIES = (Welcome, Error, Challenge)


class HandshakeRefused(Exception):
    """The server answered the handshake with ``error``."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class MissingSecret(Exception):
    """The server asked for authentication and this client has no secret to answer with."""


class ClientHandshake:
    """One connection's handshake as ``operator`` in ``role`` ("operator" or "admin").

    ``secret`` answers the server's Challenge, if it sends one (authentication on); it never
    leaves this process: only the HMAC answer is sent.
    """

    def __init__(
        self, operator: int, client: str, *, role: str = "operator", secret: str | bytes | None = None
    ) -> None:
        self.operator = operator
        self.client = client
        self.role = role
        self.secret = secret
        self.welcome: Welcome | None = None

    def hello(self) -> Hello:
        """The first message to send."""
        return Hello(self.operator, self.client)

    def step(self, msg: ServerMessage) -> Authenticate | None:
        """Take one server message; the answer to send, if any (``welcome`` is set when done).

        Raises HandshakeRefused for an Error, MissingSecret for a Challenge without a secret.
        Messages that are not part of the handshake are ignored.
        """
        match msg:
            case Welcome():
                self.welcome = msg
            case Challenge(nonce=nonce):
                if self.secret is None:
                    raise MissingSecret(f"the server requires authentication for role {self.role!r}")
                return Authenticate(self.role, respond(self.secret, nonce, self.role.encode(), self.operator))
            case Error():
                raise HandshakeRefused(msg)
        return None
