"""A test double of the server that speaks the wire protocol: instant, slow, or holding replies.

It acknowledges every transfer with OK (or a code chosen by ``code_of``), optionally after a
per-frame service time on one worker (so frames queue behind each other), or holds every reply
until released. It runs in a background thread with its own event loop so a test can drive the
load generator in the foreground.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine import wire
from engine.codes import CODE_DTYPE


class _Conn(asyncio.Protocol):
    def __init__(self, server: DoubleServer) -> None:
        self.server = server
        self.reader = wire.FrameReader()
        self.codec = wire.Codec()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for body in self.reader.feed(data):
            msg = self.codec.client_decoder.decode(body)
            self.server.handle(self, msg)

    def send(self, msg: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.codec.frame(msg))


class DoubleServer:
    """Start with ``with DoubleServer(...) as s:``; ``s.port`` is the listening port."""

    def __init__(
        self,
        *,
        accounts: int = 10_000,
        service_s: float = 0.0,
        hold_until: Callable[[], bool] | None = None,
        code_of: Callable[[np.ndarray], np.ndarray] | None = None,
        max_batch: int = 8192,
    ) -> None:
        self.accounts = accounts
        self.service_s = service_s
        self.hold_until = hold_until
        self.code_of = code_of
        self.max_batch = max_batch
        self.port = 0
        self.transfers = 0
        self.seen_ids: dict[int, list[np.ndarray]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[_Conn, wire.Submit]] | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DoubleServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("double server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._queue = asyncio.Queue()
        server = await self._loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        worker = asyncio.create_task(self._worker())
        self._ready.set()
        await self._stop.wait()
        worker.cancel()
        server.close()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    def handle(self, conn: _Conn, msg: Any) -> None:
        match msg:
            case wire.Hello(operator=op):
                self.seen_ids.setdefault(op, [])
                conn.send(
                    wire.Welcome(
                        server="double",
                        protocol=wire.PROTOCOL_VERSION,
                        accounts=self.accounts,
                        profile="double",
                        max_batch=self.max_batch,
                        max_frame_bytes=wire.DEFAULT_MAX_FRAME_BYTES,
                    )
                )
            case wire.Submit():
                assert self._queue is not None
                self._queue.put_nowait((conn, msg))
            case wire.StatsRequest(req=req):
                conn.send(wire.StatsReply(req=req, stats={"transfers": self.transfers, "hooks": {}}))
            case wire.AuditRequest(req=req):
                conn.send(wire.AuditReply(req=req, ok=True, total_fen=1, expected_fen=1, negative_accounts=0))

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            conn, msg = await self._queue.get()
            while self.hold_until is not None and not self.hold_until():
                await asyncio.sleep(0.005)
            if self.service_s:
                # Busy service: the worker is occupied, so later frames queue behind this one.
                end = time.monotonic() + self.service_s
                while time.monotonic() < end:
                    await asyncio.sleep(0.0005)
            records = wire.records_from_bytes(msg.transfers)
            self.transfers += len(records)
            if len(records):
                self.seen_ids.setdefault(int(records["operator"][0]), []).append(records["transfer_id"].copy())
            codes = self.code_of(records) if self.code_of is not None else np.zeros(len(records), dtype=CODE_DTYPE)
            conn.send(wire.Results(seq=msg.seq, codes=codes.astype(CODE_DTYPE).tobytes(), commit_ns=time.time_ns()))
