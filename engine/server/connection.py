"""One client connection (aiohttp's ``web_protocol``): frames in, replies out, flow control.

The connection frames its own replies and counts the Errors it sends. Above the write buffer's
high-water mark it stops reading (TCP pushes back on that client alone); if the buffer stays
above for ``slow_consumer_ms``, or grows past ``HARD_WRITE_LIMIT_FACTOR`` times the mark, the
client is cut off with SLOW_CONSUMER. What a frame means is the owner's business
(``ConnectionOwner``): the connection hands it every complete frame body.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Protocol, cast

import msgspec

from engine.server.config import ServerConfig
from engine.server.session import Session
from engine.server.stats import ConnectionLoad, ServerStats
from engine.wire import HEADER, Error, ErrorCode, FrameReader, FrameTooLarge, Message

#: A client whose write buffer grows past this multiple of the high-water mark is cut off at once.
HARD_WRITE_LIMIT_FACTOR = 4
#: After a cut-off, how long the server keeps trying to deliver the final Error before aborting.
CUTOFF_GRACE_S = 1.0
#: TCP keepalive on accepted sockets (Linux): probe an idle peer after 60 s, every 10 s, give up
#: after 3 unanswered probes, so a vanished peer's connection is closed in about 90 s.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 60, 10, 3


class ConnectionOwner(Protocol):
    """What a connection needs from the server that accepted it."""

    config: ServerConfig
    metrics: ServerStats
    encoder: msgspec.msgpack.Encoder

    def connection_made(self, conn: Connection) -> None: ...
    def handle(self, conn: Connection, body: bytes) -> None: ...
    def drain(self) -> None: ...
    def connection_lost(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: frames in, replies out, flow control; requests go to ``owner``."""

    def __init__(self, owner: ConnectionOwner) -> None:
        self.owner = owner
        self.config = owner.config
        self.metrics = owner.metrics
        self._encode = owner.encoder.encode
        self.reader = FrameReader(self.config.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.session = Session()
        self.load = ConnectionLoad()
        self.closing = False
        self.paused = False  # not read because its write buffer is full (slow-consumer handling)
        self.connected_at = time.monotonic()
        self.source = ""  # the peer's address (engine.server.sources), set in connection_made
        self.partial_since = 0.0  # monotonic time of the last completed frame while a frame is partial
        self.close_when_idle = False  # peer half-closed: close once its queued Submits are answered
        self._slow_timer: asyncio.TimerHandle | None = None
        self._hard_limit = self.config.write_buffer_bytes * HARD_WRITE_LIMIT_FACTOR

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        self.transport.set_write_buffer_limits(high=self.config.write_buffer_bytes)
        self.owner.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        handle = self.owner.handle
        before = self.reader.buffered
        try:
            frames = self.reader.feed(data)
        except FrameTooLarge as exc:
            self.metrics.partial_frame_bytes -= before
            self.reader = FrameReader(self.config.max_frame_bytes)  # drop the rest: closing
            for body in exc.frames:
                handle(self, body)
            if self.load.pending:  # answer the Submits it sent before the bad frame, then close
                self.owner.drain()
            self.error(
                ErrorCode.FRAME_TOO_LARGE,
                f"{exc}; frames are a 4-byte little-endian length then the body: split large Submits "
                f"(at most Welcome.max_batch transfers) and check the length prefix. Closing the connection.",
            )
            self.close()
            return
        self.metrics.partial_frame_bytes += self.reader.buffered - before
        if self.metrics.partial_frame_bytes > self.config.max_partial_frame_bytes:
            self._partial_frames_full(frames)
            return
        if not self.reader.buffered:
            self.partial_since = 0.0
        elif frames or not self.partial_since:
            self.partial_since = time.monotonic()
        for body in frames:
            handle(self, body)
            if self.closing:
                return

    def _partial_frames_full(self, frames: list[bytes]) -> None:
        """The incomplete frames of all connections hold more than the server's bound: the
        complete frames before this one's partial frame are handled and answered, then it is
        closed (the total, not only each connection, is bounded; issue 13)."""
        for body in frames:
            self.owner.handle(self, body)
        if self.load.pending:
            self.owner.drain()
        self.drop_partial_frame()
        self.error(
            ErrorCode.PARTIAL_FRAMES_FULL,
            f"incomplete frames of all connections would hold more than {self.config.max_partial_frame_bytes} "
            "bytes (--max-partial-frame-bytes); send each frame whole and promptly. Nothing of it applied. "
            "Connection closed.",
        )
        self.close()

    def eof_received(self) -> bool:
        # Keep the write side open until this client's queued Submits are answered.
        if self.load.pending:
            self.close_when_idle = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reader.buffered:  # the client went away in the middle of a frame: nothing of it applied
            self.metrics.counters["partial_frames_dropped"] += 1
            self.metrics.partial_frame_bytes -= self.reader.buffered
            self.reader = FrameReader(self.config.max_frame_bytes)
        self.closing = True
        self._cancel_slow_timer()
        self.owner.connection_lost(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies fast enough: stop reading its requests (TCP then
        # pushes back on it alone) and give it slow_consumer_ms to catch up.
        if self.closing or self.transport is None:
            return
        self.transport.pause_reading()
        self.paused = True
        if self._slow_timer is None:
            delay = self.config.slow_consumer_ms / 1000
            self._slow_timer = asyncio.get_running_loop().call_later(delay, self.cut_off, "timeout")

    def resume_writing(self) -> None:
        self._cancel_slow_timer()
        if not self.closing and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
            if self.partial_since:  # the time spent paused does not count against the frame
                self.partial_since = time.monotonic()

    # ---- replies ---------------------------------------------------------------------------------

    def frame(self, msg: Message) -> bytes:
        """``msg`` as one frame: length header, then its msgpack body."""
        body = self._encode(msg)
        return HEADER.pack(len(body)) + body

    def send(self, msg: Message) -> None:
        self.write(self.frame(msg))

    def error(self, code: ErrorCode, message: str, ref: int = -1) -> None:
        """Send an Error (and count it)."""
        self.metrics.errors[code.value] += 1
        self.send(Error(code.value, message, ref))

    def write(self, data: bytes) -> None:
        if self.closing or self.transport is None:
            return
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > self._hard_limit:
            self.cut_off("size")

    def cut_off(self, why: str) -> None:
        """Disconnect a client that does not read its replies (bounded time or size)."""
        if self.closing or self.transport is None:
            return
        self._slow_timer = None
        buffered = self.transport.get_write_buffer_size()
        cfg = self.config
        reason = (
            f"the write buffer stayed above {cfg.write_buffer_bytes} bytes for {cfg.slow_consumer_ms} ms"
            if why == "timeout"
            else f"the write buffer reached {buffered} bytes (limit {self._hard_limit})"
        )
        self.metrics.counters["slow_consumers"] += 1
        self.metrics.errors[ErrorCode.SLOW_CONSUMER.value] += 1
        message = f"{reason}: read replies as they come (or submit less at a time). Connection closed."
        # Written straight to the transport: going through write() would re-check the limit.
        self.transport.write(self.frame(Error(ErrorCode.SLOW_CONSUMER.value, message)))
        self.close()
        # close() still flushes the buffer if the client starts reading; abort() frees it if not.
        asyncio.get_running_loop().call_later(CUTOFF_GRACE_S, self.transport.abort)

    def drop_partial_frame(self) -> None:
        """Forget what arrived of an incomplete frame (nothing of it is applied)."""
        self.metrics.counters["partial_frames_dropped"] += 1
        self.metrics.partial_frame_bytes -= self.reader.buffered
        self.reader = FrameReader(self.config.max_frame_bytes)
        self.partial_since = 0.0

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self._cancel_slow_timer()
            self.transport.close()

    def _cancel_slow_timer(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
