"""The payment server: uvloop TCP, one ``asyncio.Protocol`` per connection, micro-batched ledger.

Shape (msgspec's ``examples/asyncio-kv``): length-prefixed msgpack frames, tagged-union messages
dispatched by ``match``. What this server adds, and why:

Micro-batching (group commit)
    Valid Submits from every connection go into one FIFO queue. A flush takes whole Submits from
    the head until the next one would exceed ``max_batch`` transfers, applies them as *one* engine
    batch (one ``np.concatenate``, one ``Ledger.apply``), splits the codes back per Submit and
    writes one ``Results`` per Submit, all carrying the batch's commit time. Per connection the
    frames of a flush are joined into one write (one syscall, not one per Submit). Deferred
    observers run after those writes, so they stay off the latency path.

    A batch is cut when the queue holds ``max_batch`` transfers, or when its oldest Submit has
    waited ``max_wait_us``. With ``max_wait_us = 0`` (the default) it is cut at the end of the
    event-loop round that queued it: everything read from every socket in one poll is one batch,
    and while a batch runs, the next one accumulates in the socket buffers, so batches grow with
    load on their own and idle latency stays minimal. uvloop timers have 1 ms resolution, so a
    positive wait is rounded up to whole milliseconds. When a flush leaves Submits behind (the
    queue held more than one batch) the next flush is scheduled at once, after one I/O round.

The engine runs on the event-loop thread. While a batch runs nothing is read: new frames wait in
the kernel's socket buffers (TCP's own bounded queue) and are read, validated and queued or shed
in the next I/O round. The alternative, a worker thread, would overlap little under the GIL and
would make the batch boundaries depend on thread scheduling.

Ordering
    Per connection, Results come in Submit order except for shed Submits (below), whose Results
    are sent immediately and can overtake queued ones; clients match Results by ``seq``.
    Admin requests first apply everything queued (from every connection), so they observe, and
    take effect after, every Submit received before them.

Bounded everything
    * Queue: at most ``queue_limit`` transfers (a Submit counts at least 1). A Submit that does
      not fit is answered at once with OVERLOADED for each of its transfers; it never reaches the
      ledger, and the queue (hence memory and queueing delay) stays bounded.
    * Frames: a header above ``max_frame_bytes`` gets FRAME_TOO_LARGE and the connection is
      closed (the stream cannot be trusted after it); the read buffer is bounded by the limit.
    * Write buffers: the transport's high-water mark is ``write_buffer_bytes``. Above it the
      connection stops being read (TCP pushes back on that client only); if it stays above for
      ``slow_consumer_ms``, or grows past four times the mark, the client is cut off with
      SLOW_CONSUMER.
    * Connections: at most ``max_connections``; more get TOO_MANY_CONNECTIONS.

Malformed input gets a specific ``Error`` naming what was wrong and what to do; nothing of a
rejected frame is applied, and the connection stays usable unless the framing itself is broken.
Transfers that reached the queue are applied even if their client disconnects before the
Results go out (the server accepted them; a retry is caught by the idempotency window).

``--echo`` (``ServerConfig.echo``) runs the same framing, validation, queueing and batching but
answers OK for every transfer without a ledger: the calibration target for the load generator.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO, cast

import msgspec
import numpy as np
import uvloop

from engine.codes import CODE_DTYPE, ResultCode, name_counts
from engine.hooks.base import Hook
from engine.ledger import Ledger
from engine.profiles import build_hooks
from engine.records import MAX_BATCH, TRANSFER_DTYPE
from engine.wire import (
    CLIENT_TAGS,
    DEFAULT_MAX_FRAME_BYTES,
    HEADER,
    PROTOCOL_VERSION,
    Ack,
    AuditReply,
    AuditRequest,
    Balance,
    BalanceReply,
    BlacklistAdd,
    BlacklistRemove,
    ClientMessage,
    Error,
    ErrorCode,
    FrameReader,
    FrameTooLarge,
    Freeze,
    Hello,
    Message,
    Results,
    StatsReply,
    StatsRequest,
    Submit,
    Unfreeze,
    Welcome,
)
from loadgen.workload import DEFAULT_SEED, Workload, WorkloadConfig

DEFAULT_PORT = 7480
SERVER_NAME = "cbdc-bench"
#: Bytes of msgpack around the transfers blob in a Submit frame (tag, seq, bin header), upper bound.
SUBMIT_OVERHEAD_BYTES = 32
#: A client whose write buffer grows past this multiple of the high-water mark is cut off at once.
HARD_WRITE_LIMIT_FACTOR = 4
#: After a cut-off, how long the server keeps trying to deliver the final Error before aborting.
CUTOFF_GRACE_S = 1.0
_OVERLOADED = bytes([ResultCode.OVERLOADED])
_RECORD_BYTES = TRANSFER_DTYPE.itemsize


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the server is started with (the ``serve`` command's options)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    profile: str = "baseline"
    scenario: str | None = None
    accounts: int = 1_000_000
    seed: int = DEFAULT_SEED  # workload seed: the ledger starts from Workload.initial_state()
    operators: int = 64
    max_batch: int = 8192
    max_wait_us: int = 0
    queue_limit: int = 65_536
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    write_buffer_bytes: int = 1 << 20
    slow_consumer_ms: int = 2_000
    max_connections: int = 256
    echo: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH} (the ledger's batch limit), got {self.max_batch}")
        if self.queue_limit < self.max_batch:
            raise ValueError(f"queue_limit ({self.queue_limit}) must be >= max_batch ({self.max_batch})")
        need = self.max_batch * _RECORD_BYTES + SUBMIT_OVERHEAD_BYTES
        if self.max_frame_bytes < need:
            raise ValueError(
                f"max_frame_bytes ({self.max_frame_bytes}) cannot hold a full Submit of max_batch "
                f"({self.max_batch}) transfers; use at least {need}"
            )
        if self.max_wait_us < 0 or self.slow_consumer_ms <= 0 or self.write_buffer_bytes < 1024:
            raise ValueError("max_wait_us must be >= 0, slow_consumer_ms > 0, write_buffer_bytes >= 1024")
        if not 0 <= self.port < 65_536 or self.max_connections < 1:
            raise ValueError("port must be in 0..65535 and max_connections >= 1")
        if not 0 < self.operators <= 65_536:
            raise ValueError(f"operators must be in 1..65536, got {self.operators}")


def build_ledger(config: ServerConfig, hooks: Sequence[Hook] | None = None) -> Ledger:
    """The ledger the load generator expects: the seeded workload's initial state.

    ``hooks`` replaces the profile's hooks (for tests and embedding); None builds the profile.
    """
    balance, wallet_class = Workload(WorkloadConfig(accounts=config.accounts, seed=config.seed)).initial_state()
    return Ledger(
        config.accounts,
        balance_fen=balance,
        wallet_class=wallet_class,
        operators=config.operators,
        hooks=build_hooks(config.profile, config.scenario) if hooks is None else hooks,
    )


class _Connection(asyncio.Protocol):
    """One client connection: frames in, replies out, flow control; the logic lives in Server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.reader = FrameReader(server.config.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.operator = -1  # set by Hello
        self.closing = False
        self.pending = 0  # Submits of this connection in the queue
        self.close_when_idle = False  # peer half-closed: close once its queued Submits are answered
        self._slow_timer: asyncio.TimerHandle | None = None
        self._hard_limit = server.config.write_buffer_bytes * HARD_WRITE_LIMIT_FACTOR

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=self.server.config.write_buffer_bytes)
        self.server._connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            frames = self.reader.feed(data)
        except FrameTooLarge as exc:
            self.reader = FrameReader(self.server.config.max_frame_bytes)  # drop the rest: closing
            for body in exc.frames:
                self.server._handle(self, body)
            if self.pending:  # answer the Submits it sent before the bad frame, then close
                self.server._drain()
            self.server._error(
                self,
                ErrorCode.FRAME_TOO_LARGE,
                f"{exc}; frames are a 4-byte little-endian length then the body: split large Submits "
                f"(at most Welcome.max_batch transfers) and check the length prefix. Closing the connection.",
            )
            self.close()
            return
        for body in frames:
            self.server._handle(self, body)
            if self.closing:
                return

    def eof_received(self) -> bool:
        # Keep the write side open until this client's queued Submits are answered.
        if self.pending:
            self.close_when_idle = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reader.buffered:  # the client went away in the middle of a frame: nothing of it applied
            self.server.counters["partial_frames_dropped"] += 1
        self.closing = True
        self._cancel_slow_timer()
        self.server._connection_lost(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies fast enough: stop reading its requests (TCP then
        # pushes back on it alone) and give it slow_consumer_ms to catch up.
        if self.closing or self.transport is None:
            return
        self.transport.pause_reading()
        if self._slow_timer is None:
            delay = self.server.config.slow_consumer_ms / 1000
            self._slow_timer = asyncio.get_running_loop().call_later(delay, self.cut_off, "timeout")

    def resume_writing(self) -> None:
        self._cancel_slow_timer()
        if not self.closing and self.transport is not None:
            self.transport.resume_reading()

    # ---- output ----------------------------------------------------------------------------------

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
        limit = self.server.config
        reason = (
            f"the write buffer stayed above {limit.write_buffer_bytes} bytes for {limit.slow_consumer_ms} ms"
            if why == "timeout"
            else f"the write buffer reached {buffered} bytes (limit {self._hard_limit})"
        )
        self.server.counters["slow_consumers"] += 1
        self.server.errors[ErrorCode.SLOW_CONSUMER.value] += 1
        message = f"{reason}: read replies as they come (or submit less at a time). Connection closed."
        # Written straight to the transport: going through write() would re-check the limit.
        self.transport.write(self.server._frame(Error(ErrorCode.SLOW_CONSUMER.value, message)))
        self.close()
        # close() still flushes the buffer if the client starts reading; abort() frees it if not.
        asyncio.get_running_loop().call_later(CUTOFF_GRACE_S, self.transport.abort)

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self._cancel_slow_timer()
            self.transport.close()

    def _cancel_slow_timer(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None


# A queued Submit: (connection, seq, records, transfers counted against queue_limit, enqueue ns).
_Entry = tuple[_Connection, int, np.ndarray, int, int]


class Server:
    """The payment server; ``start()`` on a running loop, ``close()`` to stop.

    ``hooks`` replaces the profile's hooks (tests, embedding); ignored in echo mode.
    """

    def __init__(self, config: ServerConfig, *, hooks: Sequence[Hook] | None = None) -> None:
        self.config = config
        self.ledger: Ledger | None = None if config.echo else build_ledger(config, hooks)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ClientMessage)
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued = 0  # transfers in the queue, as counted against queue_limit
        self._queued_records = 0  # real transfer records in the queue
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._flush_soon = False
        self._wait_s = math.ceil(config.max_wait_us / 1000) / 1000  # uvloop timers: whole ms
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_ns = time.monotonic_ns()
        self.counters: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.codes = np.zeros(len(ResultCode), dtype=np.int64)  # every code sent, incl. shed
        # Engine batch sizes in power-of-two buckets: bucket b holds sizes 2**(b-1)..2**b - 1.
        self.batch_sizes = np.zeros(MAX_BATCH.bit_length() + 1, dtype=np.int64)
        self._queue_peak = 0
        self._engine_ns = 0
        self._wait_ns_sum = 0
        self._wait_ns_max = 0

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 picks a free one)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Connection(self), self.config.host, self.config.port, reuse_address=True
        )
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "server not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        """Stop listening, answer everything queued, tell clients, close their connections."""
        if self._server is not None:
            self._server.close()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._drain()
        for conn in list(self._connections):
            self._error(conn, ErrorCode.SHUTTING_DOWN, "the server is shutting down; reconnect to a running server")
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        for _ in range(100):  # let transports flush their final frames and report connection_lost
            if not self._connections:
                break
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()

    # ---- connections -----------------------------------------------------------------------------

    def _connection_made(self, conn: _Connection) -> None:
        self.counters["connections_total"] += 1
        if len(self._connections) >= self.config.max_connections:
            self._error(
                conn,
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the server already has {len(self._connections)} connections (limit "
                f"{self.config.max_connections}); share connections or raise --max-connections",
            )
            conn.close()
            return
        self._connections.add(conn)

    def _connection_lost(self, conn: _Connection) -> None:
        self._connections.discard(conn)

    # ---- requests --------------------------------------------------------------------------------

    def _handle(self, conn: _Connection, body: bytes) -> None:
        self.counters["frames"] += 1
        try:
            msg = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            self._reject_shape(conn, body, exc)
            return
        except msgspec.DecodeError as exc:
            self._error(
                conn,
                ErrorCode.MALFORMED_FRAME,
                f"frame body is not valid msgpack ({exc}); each body must be one msgpack array "
                f"[tag, field...] of exactly the length in the 4-byte prefix",
            )
            return
        if type(msg) is Submit:
            self._submit(conn, msg)
            return
        match msg:
            case Hello():
                self._hello(conn, msg)
            case StatsRequest(req=req):
                if self._require_hello(conn, req):
                    self._send(conn, StatsReply(req, self.stats()))
            case _:
                self._admin(conn, msg)

    def _reject_shape(self, conn: _Connection, body: bytes, exc: msgspec.ValidationError) -> None:
        """A msgpack body that is not a valid client message: say which part is wrong."""
        try:
            raw = msgspec.msgpack.decode(body)
        except msgspec.DecodeError:
            raw = None
        ref = -1
        if isinstance(raw, list) and len(raw) > 1 and type(raw[1]) is int and -(2**63) <= raw[1] < 2**63:
            ref = raw[1]
        if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
            self._error(
                conn,
                ErrorCode.MALFORMED_FRAME,
                f"frame body must be a msgpack array [tag, field...] with a string tag ({exc})",
            )
        elif raw[0] not in CLIENT_TAGS:
            self._error(
                conn,
                ErrorCode.UNKNOWN_MESSAGE,
                f"unknown message tag {raw[0]!r}; a client may send: {', '.join(sorted(CLIENT_TAGS))}",
                ref,
            )
        else:
            self._error(
                conn,
                ErrorCode.BAD_FIELD,
                f"{raw[0]}: {exc} (fields are positional; see engine.wire.{raw[0]} for their types)",
                ref,
            )

    def _require_hello(self, conn: _Connection, ref: int) -> bool:
        if conn.operator >= 0:
            return True
        self._error(
            conn, ErrorCode.HELLO_REQUIRED, "send Hello(operator) first and wait for Welcome; nothing was done", ref
        )
        return False

    def _hello(self, conn: _Connection, msg: Hello) -> None:
        cfg = self.config
        if conn.operator >= 0:
            self._error(
                conn,
                ErrorCode.HELLO_REQUIRED,
                f"Hello already received (operator {conn.operator}); send it once per connection",
            )
            return
        if msg.protocol != PROTOCOL_VERSION:
            self._error(
                conn,
                ErrorCode.UNSUPPORTED_PROTOCOL,
                f"protocol {msg.protocol} is not supported; this server speaks protocol {PROTOCOL_VERSION}. "
                f"Closing the connection.",
            )
            conn.close()
            return
        if not 0 <= msg.operator < cfg.operators:
            self._error(
                conn,
                ErrorCode.BAD_FIELD,
                f"Hello: operator {msg.operator} is out of range; this server has operators 0..{cfg.operators - 1}",
            )
            return
        conn.operator = msg.operator
        self._send(
            conn,
            Welcome(
                server=SERVER_NAME,
                protocol=PROTOCOL_VERSION,
                accounts=cfg.accounts,
                profile="echo" if cfg.echo else cfg.profile,
                max_batch=cfg.max_batch,
                max_frame_bytes=cfg.max_frame_bytes,
                queue_limit=cfg.queue_limit,
                max_wait_us=round(self._wait_s * 1e6),
                echo=cfg.echo,
            ),
        )

    def _submit(self, conn: _Connection, msg: Submit) -> None:
        seq = msg.seq
        if not self._require_hello(conn, seq):
            return
        blob = msg.transfers
        n, extra = divmod(len(blob), _RECORD_BYTES)
        if extra:
            self._error(
                conn,
                ErrorCode.BAD_RECORDS,
                f"Submit {seq}: transfers blob of {len(blob)} bytes is not a whole number of "
                f"{_RECORD_BYTES}-byte TRANSFER_DTYPE records; send records.tobytes(). Nothing applied.",
                seq,
            )
            return
        if n > self.config.max_batch:
            self._error(
                conn,
                ErrorCode.BATCH_TOO_LARGE,
                f"Submit {seq} has {n} transfers, above this server's max_batch of {self.config.max_batch} "
                f"(Welcome.max_batch); split it. Nothing applied.",
                seq,
            )
            return
        records = np.frombuffer(blob, dtype=TRANSFER_DTYPE)
        if n:
            wrong = records["operator"] != conn.operator
            if wrong.any():
                i = int(np.argmax(wrong))
                self._error(
                    conn,
                    ErrorCode.OPERATOR_MISMATCH,
                    f"Submit {seq}: transfer {i} has operator {int(records['operator'][i])} but this connection "
                    f"said Hello as operator {conn.operator}; set every record's operator field to "
                    f"{conn.operator}. Nothing applied.",
                    seq,
                )
                return
        self.counters["submits"] += 1
        cost = n or 1
        if self._queued + cost > self.config.queue_limit:
            # Shed at the edge: answer at once, never touching the ledger or growing the queue.
            self.counters["shed_submits"] += 1
            self.codes[ResultCode.OVERLOADED] += n
            self._send(conn, Results(seq, _OVERLOADED * n, time.time_ns()))
            return
        self._queue.append((conn, seq, records, cost, time.perf_counter_ns()))
        self._queued += cost
        self._queued_records += n
        self._queue_peak = max(self._queue_peak, self._queued)
        conn.pending += 1
        self._schedule_flush()

    def _admin(self, conn: _Connection, msg: Message) -> None:
        req = getattr(msg, "req", -1)
        if not self._require_hello(conn, req):
            return
        ledger = self.ledger
        if ledger is None:
            self._error(
                conn,
                ErrorCode.ECHO_MODE,
                f"{type(msg).__name__} needs a ledger, but this server runs in --echo calibration mode; "
                f"start it without --echo",
                req,
            )
            return
        self._drain()  # admin requests take effect after everything received before them
        match msg:
            case AuditRequest():
                a = ledger.audit()
                self._send(conn, AuditReply(req, a.ok, a.total_fen, a.expected_fen, a.negative_accounts))
            case Balance(account=account):
                if self._check_account(conn, msg, account):
                    self._send(conn, BalanceReply(req, account, int(ledger.balance[account])))
            case Freeze(account=account) | Unfreeze(account=account):
                self._policy(conn, msg, "freeze", "freeze" if type(msg) is Freeze else "unfreeze", account)
            case BlacklistAdd(account=account) | BlacklistRemove(account=account):
                self._policy(conn, msg, "blacklist", "add" if type(msg) is BlacklistAdd else "remove", account)
            case _:  # pragma: no cover - the decoder only yields ClientMessage types
                raise AssertionError(f"unhandled message {msg!r}")

    def _check_account(self, conn: _Connection, msg: Message, account: int) -> bool:
        if 0 <= account < self.config.accounts:
            return True
        self._error(
            conn,
            ErrorCode.UNKNOWN_ACCOUNT,
            f"{type(msg).__name__}: account {account} does not exist; this ledger has accounts "
            f"0..{self.config.accounts - 1}. Nothing done.",
            getattr(msg, "req", -1),
        )
        return False

    def _policy(self, conn: _Connection, msg: Message, hook_name: str, method: str, account: int) -> None:
        req: int = getattr(msg, "req", -1)
        assert self.ledger is not None
        hook = next((h for h in self.ledger.hooks if h.name == hook_name), None)
        if hook is None:
            self._error(
                conn,
                ErrorCode.HOOK_NOT_ENABLED,
                f"{type(msg).__name__} needs the {hook_name!r} hook, which profile {self.config.profile!r} "
                f"does not enable; start the server with a profile that includes it",
                req,
            )
            return
        if not self._check_account(conn, msg, account):
            return
        try:
            getattr(hook, method)(np.array([account], dtype=np.uint32))
        except Exception as exc:  # the hook refused (e.g. a limit of its own): report, keep serving
            self._error(
                conn,
                ErrorCode.BAD_FIELD,
                f"{type(msg).__name__}: the {hook_name!r} hook refused account {account}: {type(exc).__name__}: {exc}",
                req,
            )
            return
        self.counters["admin_" + type(msg).__name__.lower()] += 1
        self._send(conn, Ack(req))

    # ---- batching ----------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_soon:
            return
        loop = self._loop
        assert loop is not None
        if self._queued_records >= self.config.max_batch or self._wait_s == 0:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = loop.call_soon(self._flush)
            self._flush_soon = True
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self._wait_s, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._flush_soon = False
        self._run_batch()
        if self.ledger is not None:
            self.ledger.run_deferred()  # the replies are written: observers run off the latency path
        if self._queue:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)
            self._flush_soon = True

    def _drain(self) -> None:
        """Apply and answer everything queued now (before admin requests and at shutdown)."""
        while self._queue:
            self._run_batch()
        if self.ledger is not None:
            self.ledger.run_deferred()

    def _run_batch(self) -> None:
        """One engine batch from the head of the queue: apply, split, reply."""
        queue = self._queue
        limit = self.config.max_batch
        entries: list[_Entry] = []
        n = 0
        cost = 0
        while queue and n + len(queue[0][2]) <= limit:
            entry = queue.popleft()
            entries.append(entry)
            n += len(entry[2])
            cost += entry[3]
        if not entries:
            return
        self._queued -= cost
        self._queued_records -= n
        batch = entries[0][2] if len(entries) == 1 else np.concatenate([e[2] for e in entries])
        t0 = time.perf_counter_ns()
        codes = self.ledger.apply(batch) if self.ledger is not None else np.zeros(n, dtype=CODE_DTYPE)
        commit_ns = time.time_ns()
        t1 = time.perf_counter_ns()
        self._engine_ns += t1 - t0
        wait = t1 - entries[0][4]
        self._wait_ns_sum += wait
        self._wait_ns_max = max(self._wait_ns_max, wait)
        self.counters["batches"] += 1
        self.counters["transfers"] += n
        self.batch_sizes[n.bit_length()] += 1
        self.codes += np.bincount(codes, minlength=len(ResultCode))

        blob = codes.tobytes()
        out: dict[_Connection, list[bytes]] = {}
        off = 0
        encode = self._encoder.encode
        pack = HEADER.pack
        for conn, seq, records, _, _ in entries:
            k = len(records)
            conn.pending -= 1
            if conn.closing:
                off += k
                continue
            body = encode(Results(seq, blob[off : off + k], commit_ns))
            off += k
            frames = out.get(conn)
            if frames is None:
                out[conn] = [pack(len(body)), body]
            else:
                frames += (pack(len(body)), body)
        for conn, frames in out.items():
            conn.write(b"".join(frames))
            if conn.close_when_idle and conn.pending == 0:
                conn.close()

    # ---- replies -----------------------------------------------------------------------------------

    def _frame(self, msg: Message) -> bytes:
        body = self._encoder.encode(msg)
        return HEADER.pack(len(body)) + body

    def _send(self, conn: _Connection, msg: Message) -> None:
        conn.write(self._frame(msg))

    def _error(self, conn: _Connection, code: ErrorCode, message: str, ref: int = -1) -> None:
        self.errors[code.value] += 1
        self._send(conn, Error(code.value, message, ref))

    # ---- stats -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for StatsReply: plain JSON-able values (see the wire StatsReply)."""
        c = self.counters
        batches = c["batches"]
        stats: dict[str, Any] = {
            "mode": "echo" if self.config.echo else "ledger",
            "profile": "echo" if self.config.echo else self.config.profile,
            "accounts": self.config.accounts,
            "uptime_s": (time.monotonic_ns() - self._started_ns) / 1e9,
            "connections": len(self._connections),
            "connections_total": c["connections_total"],
            "frames": c["frames"],
            "submits": c["submits"],
            "batches": batches,
            "transfers": c["transfers"],
            "codes": name_counts(self.codes),
            "overloaded": int(self.codes[ResultCode.OVERLOADED]),
            "shed_submits": c["shed_submits"],
            "queue_transfers": self._queued,
            "queue_submits": len(self._queue),
            "queue_limit": self.config.queue_limit,
            "queue_peak_transfers": self._queue_peak,
            "oldest_enqueue_to_commit_us_mean": self._wait_ns_sum / batches / 1e3 if batches else 0.0,
            "oldest_enqueue_to_commit_us_max": self._wait_ns_max / 1e3,
            "engine_s": self._engine_ns / 1e9,
            "batch_size_mean": c["transfers"] / batches if batches else 0.0,
            "batch_sizes": {
                f"{1 << (b - 1)}-{(1 << b) - 1}" if b else "0": int(k) for b, k in enumerate(self.batch_sizes) if k
            },
            "errors": dict(self.errors),
            "slow_consumers": c["slow_consumers"],
            "partial_frames_dropped": c["partial_frames_dropped"],
            "admin": {k.removeprefix("admin_"): v for k, v in c.items() if k.startswith("admin_")},
        }
        ledger = self.ledger
        if ledger is not None:
            seen = max(ledger.stats.transfers, 1)
            stats["ledger"] = {
                "batches": ledger.stats.batches,
                "transfers": ledger.stats.transfers,
                "exact_path_transfers": ledger.stats.exact_path_transfers,
                "refused_batches": ledger.stats.refused_batches,
            }
            stats["hooks"] = {
                name: {
                    "ns_per_transfer": t.total_ns / seen,
                    "authorize_ns": t.authorize_ns,
                    "observe_ns": t.observe_ns,
                    "begin_ns": t.begin_ns,
                    "errors": t.errors,
                    "last_error": t.last_error,
                }
                for name, t in ledger.hook_timing.items()
            }
        return stats


# ---- running it ------------------------------------------------------------------------------------


def serve(config: ServerConfig, *, out: TextIO | None = None) -> int:
    """Run the server until SIGINT or SIGTERM (the ``serve`` command); prints ``listening on H:P``."""
    return uvloop.run(_serve(config, out or sys.stdout))


async def _serve(config: ServerConfig, out: TextIO) -> int:
    server = Server(config)  # builds the ledger before listening: a client never waits on it
    host, port = await server.start()
    print(f"listening on {host}:{port}", file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
    s = server.stats()
    print(
        f"stopped: {s['transfers']:,} transfers in {s['batches']:,} batches "
        f"(mean {s['batch_size_mean']:,.0f}), {s['overloaded']:,} overloaded, {s['connections_total']} connections",
        file=sys.stderr,
        flush=True,
    )
    return 0


class ServerThread:
    """A Server on its own uvloop in a background thread: for tests and in-process calibration.

    Use as a context manager; ``address`` is (host, port) once started.
    """

    def __init__(self, config: ServerConfig, *, hooks: Sequence[Hook] | None = None) -> None:
        self.config = config
        self.server = Server(config, hooks=hooks)
        self.address: tuple[str, int] = ("", 0)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="cbdc-server", daemon=True)

    def start(self) -> tuple[str, int]:
        self._thread.start()
        self._ready.wait(60)
        if self._failure is not None:
            raise RuntimeError(f"server failed to start: {self._failure}") from self._failure
        return self.address

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result (inspect state safely)."""
        assert self._loop is not None
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn(*args))
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(30):
            raise TimeoutError("server loop did not answer")
        return box[0]

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            uvloop.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.address = await self.server.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()
