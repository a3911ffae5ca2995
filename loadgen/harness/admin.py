"""An admin connection to the server: stats and the conservation audit, request by request."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import typing
from typing import Any

from engine import wire
from engine.auth import ROLE_ADMIN, load_secrets
from loadgen.generator.gateway import CONNECT_TIMEOUT_S, AsyncHandshake, FrameProtocol, GatewayError


class AdminClient:
    """Sends admin requests (matched by ``req``) over its own connection.

    ``secrets`` (a path or "env", see ``engine.auth.load_secrets``) holds the admin secret for a
    server with authentication on.
    """

    def __init__(self, host: str, port: int, *, operator: int = 0, secrets: str = "") -> None:
        self.secrets = load_secrets(secrets)
        self.host = host
        self.port = port
        self.operator = operator
        self.codec = wire.Codec()
        self.transport: asyncio.Transport | None = None
        self.welcome: wire.Welcome | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._handshake: AsyncHandshake | None = None
        self._req = itertools.count(1)
        self.failure: str | None = None

    async def connect(self) -> wire.Welcome:
        loop = asyncio.get_running_loop()
        self._handshake = AsyncHandshake(
            self.operator, "cbdc-bench admin", ROLE_ADMIN, self.secrets, self.codec, "the admin connection"
        )
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: FrameProtocol(self), self.host, self.port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise GatewayError(f"cannot connect to the server at {self.host}:{self.port} ({exc})") from exc
        self.transport = typing.cast(asyncio.Transport, transport)
        self._handshake.start(self.transport)
        try:
            self.welcome = await self._handshake.wait(f"{self.host}:{self.port}")
        except BaseException:
            transport.abort()
            raise
        return self.welcome

    async def request(self, make: Any, timeout: float = 30.0) -> Any:
        """Send ``make(req)`` and await the reply carrying the same ``req``."""
        if self.transport is None or self.transport.is_closing():
            raise GatewayError(f"admin connection is not open ({self.failure or 'not connected'})")
        req = next(self._req)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        self.transport.write(self.codec.frame(make(req)))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(req, None)

    async def stats(self) -> dict[str, Any]:
        reply = await self.request(lambda r: wire.StatsRequest(req=r))
        if not isinstance(reply, wire.StatsReply):
            raise GatewayError(f"stats request answered with {reply!r}")
        return reply.stats

    async def audit(self) -> wire.AuditReply:
        reply = await self.request(lambda r: wire.AuditRequest(req=r), timeout=120.0)
        if not isinstance(reply, wire.AuditReply):
            raise GatewayError(f"audit request answered with {reply!r}")
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ---- FrameProtocol handler ----------------------------------------------------------------

    def on_bytes(self, n: int) -> None:
        """Admin traffic is not counted (only the gateways' bytes per payment are)."""

    def on_message(self, msg: Any, now_ns: int) -> None:
        handshake = self._handshake
        if isinstance(msg, wire.Welcome | wire.Challenge) or (
            isinstance(msg, wire.Error) and handshake is not None and handshake.pending
        ):
            if handshake is not None:
                handshake.on_message(msg)
            return
        req = getattr(msg, "req", None)
        if req is None and isinstance(msg, wire.Error):
            req = msg.ref
        fut = self._waiting.get(req) if req is not None else None
        if fut is not None and not fut.done():
            if isinstance(msg, wire.Error):
                fut.set_exception(GatewayError(f"server refused request {req}: {msg.code}: {msg.message}"))
            else:
                fut.set_result(msg)

    def fail(self, why: str) -> None:
        self.failure = why
        if self._handshake is not None and self._handshake.pending:
            self._handshake.fail(why, f"{self.host}:{self.port}")
        if self.transport is not None:
            self.transport.abort()

    def on_closed(self, exc: Exception | None) -> None:
        error = GatewayError(f"admin connection closed: {exc or self.failure or 'by the server'}")
        if self._handshake is not None:
            self._handshake.on_closed(error)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(error)
                with contextlib.suppress(BaseException):
                    fut.exception()
