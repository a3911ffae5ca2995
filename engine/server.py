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
      ledger, and the queue (hence memory and queueing delay) stays bounded. No connection may
      hold more than its fair share of the queue (``queue_limit`` / connected operators, at least
      ``max_batch``), so one operator flooding the server cannot get the others' payments shed.
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

Durability (``journal``)
    Each engine batch is appended to the journal (records and result codes, one entry, one
    fsync under ``fsync="batch"``) after ``apply`` and *before* its Results are written: a
    transfer is acknowledged only once it is in the journal. State-changing admin requests are
    journalled before their Ack. On start, an existing journal is replayed into the freshly built
    ledger (see ``engine.journal``); its header must match this server's accounts, seed,
    operators, profile, scenario and ownership. If the journal cannot be written, the server stops
    acknowledging anything (JOURNAL_FAILED to every client) and exits: memory is then ahead of the
    journal, and only a restart (replaying the journal) gives a state that matches what was
    acknowledged.

    The fsync runs on the event-loop thread. Measured on the 2-core benchmark machine: ~0.25 ms
    per fsync idle, ~0.64 ms under 200,000 transfers/s (215 fsyncs/s, 14% of the loop's time;
    throughput unchanged, p99 6.7 -> 19 ms; tests/benchmarks/durability_table.py). While it
    blocks, requests accumulate in the socket buffers and the next batch grows, so group commit
    adapts to load by itself. A writer thread could hide at most that 14% (fsync releases the
    GIL) but would make the order of journal entries and replies depend on thread scheduling;
    ``interval:MS`` is the measured cheaper alternative (p99 ~9 ms).

Authentication (``secrets``)
    With secrets, ``Hello`` is answered with a ``Challenge`` nonce and the client must answer
    ``Authenticate`` (HMAC, ``engine.auth``; compared in constant time) before anything else;
    a wrong or missing answer gets AUTH_FAILED and the connection is closed. Operators may then
    debit only their own account range (``owner_ranges``; FORBIDDEN_PAYER otherwise), which
    Welcome states. Admin connections (the admin secret) may freeze, unfreeze, blacklist, audit
    and read any balance but not submit; operators get NOT_PERMITTED for those, and may read
    only balances of their own accounts. Stats are open to every authenticated connection.
    Without secrets everything is as before: no authentication, no ownership.

Timeouts
    A connection must complete Hello (and authentication) within ``handshake_timeout_ms``, and
    a frame once started must be complete within ``frame_timeout_ms`` of the last complete frame
    (a client trickling a frame, or gone half-way through one); both are cut off with an Error.
    Idle connections without a partial frame are legitimate (an operator with nothing to send);
    TCP keepalive detects their peers vanishing.

``--echo`` (``ServerConfig.echo``) runs the same framing, validation, queueing and batching but
answers OK for every transfer without a ledger: the calibration target for the load generator.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import msgspec
import numpy as np
import uvloop

from engine.auth import ROLE_ADMIN, ROLE_OPERATOR, Secrets, load_secrets, new_nonce
from engine.codes import CODE_DTYPE, ResultCode, name_counts
from engine.hooks.base import Hook
from engine.journal import AdminEntry, FsyncPolicy, Journal, JournalHeader, Recovery, recover
from engine.ledger import Ledger, owner_ranges
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
    Authenticate,
    Balance,
    BalanceReply,
    BlacklistAdd,
    BlacklistRemove,
    Challenge,
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
#: TCP keepalive on accepted sockets (Linux): probe an idle peer after 60 s, every 10 s, give up
#: after 3 unanswered probes, so a vanished peer's connection is closed in about 90 s.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 60, 10, 3
#: Admin requests that change or reveal ledger-wide state: with authentication on, admin only.
PRIVILEGED = (Freeze, Unfreeze, BlacklistAdd, BlacklistRemove, AuditRequest)
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
    journal: str = ""  # journal path; "" = none (acknowledged payments do not survive a restart)
    fsync: str = "batch"  # "batch", "interval:MS" or "off" (see engine.journal)
    secrets: str = ""  # "" = authentication off; a secrets TOML path, or "env" (CBDC_* variables)
    handshake_timeout_ms: int = 10_000
    frame_timeout_ms: int = 10_000

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
        FsyncPolicy.parse(self.fsync)
        if self.journal and self.echo:
            raise ValueError("--journal needs a ledger; --echo runs without one")
        if self.handshake_timeout_ms <= 0 or self.frame_timeout_ms <= 0:
            raise ValueError("handshake_timeout_ms and frame_timeout_ms must be > 0")

    def journal_header(self) -> JournalHeader:
        """What a journal written by this server records about how its ledger is built."""
        digest = hashlib.sha256(open(self.scenario, "rb").read()).hexdigest() if self.scenario else ""  # noqa: SIM115
        return JournalHeader(
            accounts=self.accounts,
            seed=self.seed,
            operators=self.operators,
            profile=self.profile,
            scenario_sha256=digest,
            ownership=bool(self.secrets),
        )


def build_ledger(config: ServerConfig, hooks: Sequence[Hook] | None = None, *, ownership: bool = False) -> Ledger:
    """The ledger the load generator expects: the seeded workload's initial state.

    ``hooks`` replaces the profile's hooks (for tests and embedding); None builds the profile.
    ``ownership`` gives each operator its contiguous range of accounts (``owner_ranges``).
    """
    balance, wallet_class = Workload(WorkloadConfig(accounts=config.accounts, seed=config.seed)).initial_state()
    return Ledger(
        config.accounts,
        balance_fen=balance,
        wallet_class=wallet_class,
        operators=config.operators,
        hooks=build_hooks(config.profile, config.scenario) if hooks is None else hooks,
        owners=owner_ranges(config.accounts, config.operators) if ownership else None,
    )


class _Connection(asyncio.Protocol):
    """One client connection: frames in, replies out, flow control; the logic lives in Server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.reader = FrameReader(server.config.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.operator = -1  # set by Hello (after authentication, when it is on)
        self.admin = False  # authenticated with the admin secret
        self.claimed_operator = -1  # Hello's operator while its Challenge is outstanding
        self.nonce = b""
        self.closing = False
        self.paused = False  # not read because its write buffer is full (slow-consumer handling)
        self.connected_at = time.monotonic()
        self.partial_since = 0.0  # monotonic time of the last completed frame while a frame is partial
        self.pending = 0  # Submits of this connection in the queue
        self.queued = 0  # their transfers, as counted against queue_limit (the fair-share check)
        self.submitter = False  # a Welcomed operator connection: counted in the fair share
        self.close_when_idle = False  # peer half-closed: close once its queued Submits are answered
        self._slow_timer: asyncio.TimerHandle | None = None
        self._hard_limit = server.config.write_buffer_bytes * HARD_WRITE_LIMIT_FACTOR

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
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
        if not self.reader.buffered:
            self.partial_since = 0.0
        elif frames or not self.partial_since:
            self.partial_since = time.monotonic()
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
        self.paused = True
        if self._slow_timer is None:
            delay = self.server.config.slow_consumer_ms / 1000
            self._slow_timer = asyncio.get_running_loop().call_later(delay, self.cut_off, "timeout")

    def resume_writing(self) -> None:
        self._cancel_slow_timer()
        if not self.closing and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
            if self.partial_since:  # the time spent paused does not count against the frame
                self.partial_since = time.monotonic()

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


# A queued Submit: (connection, seq, records blob, transfers, counted against queue_limit, enqueue ns).
_Entry = tuple[_Connection, int, bytes, int, int, int]


class Server:
    """The payment server; ``start()`` on a running loop, ``close()`` to stop.

    ``hooks`` replaces the profile's hooks (tests, embedding); ignored in echo mode.
    """

    def __init__(
        self, config: ServerConfig, *, hooks: Sequence[Hook] | None = None, secrets: Secrets | None = None
    ) -> None:
        self.config = config
        #: None = authentication off (and no account ownership): the benchmark's default.
        self.secrets = secrets if secrets is not None else load_secrets(config.secrets)
        self.outputs_set_aside: list[tuple[Path, Path]] = []
        self.ledger: Ledger | None = None
        if not config.echo:
            hooks = build_hooks(config.profile, config.scenario) if hooks is None else hooks
            if config.journal and os.path.exists(config.journal) and os.path.getsize(config.journal) > 0:
                self._set_aside_outputs(hooks)
            self.ledger = build_ledger(config, hooks, ownership=self.secrets is not None)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ClientMessage)
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued = 0  # transfers in the queue, as counted against queue_limit
        self._submitters = 0  # Welcomed operator connections (the fair share divides among them)
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
        self._sweep_handle: asyncio.TimerHandle | None = None
        #: Set when the server must stop (the journal failed); ``serve`` waits on it too.
        self.failed: asyncio.Future[str] | None = None
        self.journal: Journal | None = None
        self.recovery: Recovery | None = None
        self.recovery_s = 0.0
        if config.journal:
            self._open_journal()

    def startup_notes(self) -> list[str]:
        """What the operator of the server should know at start: journal, recovery, authentication."""
        cfg = self.config
        notes = []
        for path, aside in self.outputs_set_aside:
            notes.append(f"hook output {path} regenerated from the journal; the previous file is now {aside}")
        if self.recovery is not None:
            r = self.recovery
            notes.append(
                f"recovered from journal: {r.message}; {r.batches:,} batches ({r.transfers:,} transfers) and "
                f"{r.admin_ops} admin operations replayed in {self.recovery_s:.2f} s"
            )
        if self.journal is not None:
            notes.append(f"journal {cfg.journal} (fsync {self.journal.policy}), {self.journal.seq} entries")
        elif not cfg.echo:
            notes.append("journal off: acknowledged payments do not survive a restart (use --journal PATH)")
        if self.secrets is None:
            notes.append("authentication off: any client may connect as any operator and administer (use --secrets)")
        else:
            notes.append(
                f"authentication on: {len(self.secrets.operators)} operators enrolled; operators may debit only "
                "their own account range; admin requests need the admin secret"
            )
        return notes

    # ---- durability ------------------------------------------------------------------------------

    def _set_aside_outputs(self, hooks: Sequence[Hook]) -> None:
        """Before a recovery: move the hooks' output files aside; the replay writes them again.

        They hold what the hooks observed before the crash, possibly missing the last batches
        (observers run after the replies) and about to be written again by the replay; the
        regenerated files are complete and in step with the recovered hook state.
        """
        for hook in hooks:
            for path in hook.output_files():
                if path.exists() and path.stat().st_size > 0:
                    aside = path.with_name(path.name + ".before-recovery")
                    n = 1
                    while aside.exists():
                        n += 1
                        aside = path.with_name(f"{path.name}.before-recovery.{n}")
                    path.rename(aside)
                    self.outputs_set_aside.append((path, aside))

    def _open_journal(self) -> None:
        """Replay an existing journal into the new ledger, then open it for appending."""
        ledger = self.ledger
        assert ledger is not None
        path = self.config.journal
        header = self.config.journal_header()
        t0 = time.perf_counter()

        def check(found: JournalHeader) -> None:
            diff = found.differences(header)
            if diff:
                raise ValueError(
                    f"journal {path} was written by a server built differently ({'; '.join(diff)}); "
                    "restart with the options that wrote it, or use a new journal path. Nothing was replayed."
                )

        def apply_batch(batch: np.ndarray) -> np.ndarray:
            codes = ledger.apply(batch)
            ledger.run_deferred()  # as the live server does after each batch's replies
            return codes

        entries = 0
        if os.path.exists(path) and os.path.getsize(path) > 0:
            self.recovery = recover(path, apply_batch, self._apply_admin, check)
            entries = self.recovery.entries
            self.recovery_s = time.perf_counter() - t0
        self.journal = Journal(path, self.config.fsync, entries=entries)
        if entries == 0:
            self.journal.append_header(header)

    def _apply_admin(self, entry: AdminEntry) -> None:
        """Redo a journalled admin operation ("hook.method") during recovery."""
        assert self.ledger is not None
        hook_name, _, method = entry.op.partition(".")
        hook = next((h for h in self.ledger.hooks if h.name == hook_name), None)
        if hook is None or method not in ("freeze", "unfreeze", "add", "remove"):
            raise ValueError(f"journal admin entry {entry.op!r} names no operation this server's hooks have")
        getattr(hook, method)(np.array(entry.accounts, dtype=np.uint32))

    def _journal_failed(self, exc: OSError) -> None:
        """The journal cannot be written: acknowledge nothing more, tell every client, stop."""
        self._fail(ErrorCode.JOURNAL_FAILED, f"the journal {self.config.journal} could not be written ({exc})")

    def _fail(self, code: ErrorCode, what: str) -> None:
        """A fault after which memory may differ from what was acknowledged: stop acknowledging,
        tell every client, stop listening (``serve`` then exits; a journal restores the last
        acknowledged state on restart)."""
        message = (
            f"{what}; nothing more is acknowledged. "
            "Transfers without Results have unknown outcome: resubmit them (same ids) after the server restarts."
        )
        print(f"FATAL: {message}", file=sys.stderr, flush=True)
        self.journal = None
        self._queue.clear()
        self._queued = self._queued_records = 0
        for conn in list(self._connections):
            conn.queued = 0
            self._error(conn, code, message)
            conn.close()
        if self._server is not None:
            self._server.close()
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(message)

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 picks a free one)."""
        self._loop = asyncio.get_running_loop()
        self.failed = self._loop.create_future()
        self._server = await self._loop.create_server(
            lambda: _Connection(self), self.config.host, self.config.port, reuse_address=True
        )
        self._sweep_handle = self._loop.call_later(self._sweep_interval_s, self._sweep)
        return self.address

    @property
    def _sweep_interval_s(self) -> float:
        return min(self.config.handshake_timeout_ms, self.config.frame_timeout_ms, 4000) / 4000

    def _sweep(self) -> None:
        """Cut off connections stuck in the handshake or in the middle of a frame."""
        now = time.monotonic()
        handshake_s = self.config.handshake_timeout_ms / 1000
        frame_s = self.config.frame_timeout_ms / 1000
        for conn in list(self._connections):
            if conn.closing:
                continue
            if conn.operator < 0 and now - conn.connected_at > handshake_s:
                self._error(
                    conn,
                    ErrorCode.HANDSHAKE_TIMEOUT,
                    f"no completed Hello{' and Authenticate' if self.secrets else ''} within "
                    f"{self.config.handshake_timeout_ms} ms of connecting. Connection closed.",
                )
                conn.close()
            elif conn.partial_since and not conn.paused and now - conn.partial_since > frame_s:
                self.counters["partial_frames_dropped"] += 1
                conn.reader = FrameReader(self.config.max_frame_bytes)  # what it sent of the frame is dropped
                conn.partial_since = 0.0
                self._error(
                    conn,
                    ErrorCode.FRAME_TIMEOUT,
                    f"a frame was started but not completed within {self.config.frame_timeout_ms} ms; "
                    "send each frame whole (4-byte length, then that many bytes). Nothing of it applied. "
                    "Connection closed.",
                )
                conn.close()
        assert self._loop is not None
        self._sweep_handle = self._loop.call_later(self._sweep_interval_s, self._sweep)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "server not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        """Stop listening, answer everything queued, tell clients, close their connections."""
        if self._server is not None:
            self._server.close()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
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
        if self.journal is not None:
            self.journal.close()
        if self.ledger is not None:
            for hook in self.ledger.hooks:
                hook.close()

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
        if conn.submitter:
            conn.submitter = False
            self._submitters -= 1

    # ---- requests --------------------------------------------------------------------------------

    def _handle(self, conn: _Connection, body: bytes) -> None:
        self.counters["frames"] += 1
        try:
            msg = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            self._reject_shape(conn, body, exc)
            return
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # msgspec raises UnicodeDecodeError (not a DecodeError) for a string that is not
            # UTF-8; uncaught, it escaped data_received and the connection died without an Error
            # (found by fuzzing: tests/fuzz_corpus/invalid-utf8-*).
            self._error(
                conn,
                ErrorCode.MALFORMED_FRAME,
                f"frame body is not valid msgpack ({type(exc).__name__}: {exc}); each body must be one msgpack "
                f"array [tag, field...] of exactly the length in the 4-byte prefix, strings in UTF-8",
            )
            return
        if type(msg) is Submit:
            self._submit(conn, msg)
            return
        match msg:
            case Hello():
                self._hello(conn, msg)
            case Authenticate():
                self._authenticate(conn, msg)
            case StatsRequest(req=req):
                if self._require_hello(conn, req):
                    self._send(conn, StatsReply(req, self.stats()))
            case _:
                self._admin(conn, msg)

    def _reject_shape(self, conn: _Connection, body: bytes, exc: msgspec.ValidationError) -> None:
        """A msgpack body that is not a valid client message: say which part is wrong."""
        try:
            raw = msgspec.msgpack.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
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
        if self.secrets is not None:
            self._auth_failed(conn, "authentication is required: send Hello, answer its Challenge with Authenticate")
            return False
        self._error(
            conn, ErrorCode.HELLO_REQUIRED, "send Hello(operator) first and wait for Welcome; nothing was done", ref
        )
        return False

    def _auth_failed(self, conn: _Connection, why: str) -> None:
        self.counters["auth_failures"] += 1
        self._error(conn, ErrorCode.AUTH_FAILED, f"{why}; nothing was done. Connection closed.")
        conn.close()

    def _hello(self, conn: _Connection, msg: Hello) -> None:
        cfg = self.config
        if self.secrets is not None and conn.nonce:
            self._auth_failed(conn, "Hello sent twice: answer the Challenge with Authenticate")
            return
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
        if self.secrets is not None:
            conn.claimed_operator = msg.operator
            conn.nonce = new_nonce()
            self._send(conn, Challenge(conn.nonce))
            return
        conn.operator = msg.operator
        self._welcome(conn)

    def _authenticate(self, conn: _Connection, msg: Authenticate) -> None:
        if self.secrets is None:
            self._error(
                conn,
                ErrorCode.HELLO_REQUIRED,
                "authentication is off on this server: Hello alone is answered with Welcome; nothing done",
            )
            return
        if not conn.nonce:
            self._auth_failed(conn, "Authenticate without an outstanding Challenge: send Hello first, once")
            return
        nonce, conn.nonce = conn.nonce, b""  # one answer per nonce
        role = msg.role.encode()
        if role not in (ROLE_OPERATOR, ROLE_ADMIN) or not self.secrets.verify(
            role, conn.claimed_operator, nonce, msg.answer
        ):
            self._auth_failed(
                conn,
                f"wrong credentials for role {msg.role!r} as operator {conn.claimed_operator} (the answer must be "
                f"engine.auth.respond(secret, nonce, role, operator) with that operator's or the admin's secret)",
            )
            return
        conn.admin = role == ROLE_ADMIN
        conn.operator = conn.claimed_operator
        self.counters["auth_" + msg.role] += 1
        self._welcome(conn)

    def _welcome(self, conn: _Connection) -> None:
        cfg = self.config
        if not conn.admin and not conn.submitter:
            conn.submitter = True
            self._submitters += 1
        owners = None if self.ledger is None else self.ledger.owners
        operator = conn.operator
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
                next_transfer_id=0 if self.ledger is None else int(self.ledger.ids.high[operator]) + 1,
                auth=self.secrets is not None,
                role="admin" if conn.admin else "operator",
                ownership=owners is not None,
                owned_from=0 if owners is None else int(owners[operator]),
                owned_to=0 if owners is None else int(owners[operator + 1]),
            ),
        )

    def _submit(self, conn: _Connection, msg: Submit) -> None:
        seq = msg.seq
        if not self._require_hello(conn, seq):
            return
        if conn.admin:
            self._error(
                conn,
                ErrorCode.NOT_PERMITTED,
                f"Submit {seq}: admin connections administer and never submit; connect as an operator. "
                "Nothing applied.",
                seq,
            )
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
        over_share = conn.queued + cost > self._fair_share()
        if over_share or self._queued + cost > self.config.queue_limit:
            # Shed at the edge: answer at once, never touching the ledger or growing the queue.
            self.counters["shed_submits"] += 1
            self.counters["shed_over_fair_share"] += over_share
            self.codes[ResultCode.OVERLOADED] += n
            self._send(conn, Results(seq, _OVERLOADED * n, time.time_ns()))
            return
        self._queue.append((conn, seq, blob, n, cost, time.perf_counter_ns()))
        self._queued += cost
        conn.queued += cost
        self._queued_records += n
        self._queue_peak = max(self._queue_peak, self._queued)
        conn.pending += 1
        self._schedule_flush()

    def _fair_share(self) -> int:
        """Most transfers one connection may have queued: an equal share, at least a full batch."""
        return max(self.config.queue_limit // max(self._submitters, 1), self.config.max_batch)

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
        if self.secrets is not None and not conn.admin and isinstance(msg, PRIVILEGED):
            self._error(
                conn,
                ErrorCode.NOT_PERMITTED,
                f"{type(msg).__name__} needs the admin credential; this connection is operator {conn.operator}. "
                "Nothing done.",
                req,
            )
            return
        self._drain()  # admin requests take effect after everything received before them
        if self.failed is not None and self.failed.done():
            return
        match msg:
            case AuditRequest():
                a = ledger.audit()
                self._send(conn, AuditReply(req, a.ok, a.total_fen, a.expected_fen, a.negative_accounts))
            case Balance(account=account):
                if self._check_account(conn, msg, account) and self._may_read(conn, req, account):
                    self._send(conn, BalanceReply(req, account, int(ledger.balance[account])))
            case Freeze(account=account) | Unfreeze(account=account):
                self._policy(conn, msg, "freeze", "freeze" if type(msg) is Freeze else "unfreeze", account)
            case BlacklistAdd(account=account) | BlacklistRemove(account=account):
                self._policy(conn, msg, "blacklist", "add" if type(msg) is BlacklistAdd else "remove", account)
            case _:  # pragma: no cover - the decoder only yields ClientMessage types
                raise AssertionError(f"unhandled message {msg!r}")

    def _may_read(self, conn: _Connection, req: int, account: int) -> bool:
        """With authentication, an operator reads only balances of the accounts it owns."""
        owners = None if self.ledger is None else self.ledger.owners
        if conn.admin or owners is None or owners[conn.operator] <= account < owners[conn.operator + 1]:
            return True
        self._error(
            conn,
            ErrorCode.NOT_PERMITTED,
            f"Balance: account {account} belongs to another operator; operator {conn.operator} owns accounts "
            f"{int(owners[conn.operator])}..{int(owners[conn.operator + 1]) - 1} (Welcome.owned_from/owned_to)",
            req,
        )
        return False

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
        if self.journal is not None:
            # Recorded before the Ack (and only if the hook accepted it, so replay never fails on it).
            try:
                self.journal.append_admin(AdminEntry(f"{hook_name}.{method}", [account]))
            except OSError as exc:
                self._journal_failed(exc)
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
        if self._queue:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)
            self._flush_soon = True

    def _drain(self) -> None:
        """Apply and answer everything queued now (before admin requests and at shutdown)."""
        while self._queue:
            self._run_batch()

    def _run_batch(self) -> None:
        """One engine batch from the head of the queue: apply, split, reply."""
        queue = self._queue
        limit = self.config.max_batch
        entries: list[_Entry] = []
        n = 0
        cost = 0
        while queue and n + queue[0][3] <= limit:
            entry = queue.popleft()
            entries.append(entry)
            n += entry[3]
            cost += entry[4]
            entry[0].queued -= entry[4]
        if not entries:
            return
        self._queued -= cost
        self._queued_records -= n
        # Joining the raw blobs is one memcpy; np.concatenate of structured arrays costs ~10 µs per
        # part in dtype promotion. A bytearray keeps the batch writable like any other array.
        batch = np.frombuffer(bytearray().join([e[2] for e in entries]), dtype=TRANSFER_DTYPE)
        t0 = time.perf_counter_ns()
        try:
            codes = self.ledger.apply(batch) if self.ledger is not None else np.zeros(n, dtype=CODE_DTYPE)
        except Exception as exc:  # a bug, not a hook error (the ledger turns those into HOOK_ERROR)
            self._fail(ErrorCode.ENGINE_FAILED, f"the engine failed applying a batch ({type(exc).__name__}: {exc})")
            return
        if self.journal is not None:
            # Durable (as the fsync policy says) before any of its Results is written.
            try:
                self.journal.append_batch(batch, codes)
            except OSError as exc:
                self._journal_failed(exc)
                return
        commit_ns = time.time_ns()
        t1 = time.perf_counter_ns()
        self._engine_ns += t1 - t0
        wait = t1 - entries[0][5]
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
        for conn, seq, _, k, _, _ in entries:
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
        if self.ledger is not None:
            # The replies are written: observers run off the latency path, after every batch (so
            # that replaying the journal batch by batch rebuilds the same hook state).
            self.ledger.run_deferred()

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
        """Counters for StatsReply, plain JSON-able values; all totals are since the server started.

        ``transfers``/``batches``: through the engine (shed transfers excluded); ``codes``: every
        result code sent, including ``overloaded`` for shed Submits; ``batch_sizes``: engine
        batches per power-of-two size bucket; ``engine_s``: time inside ``apply``;
        ``oldest_enqueue_to_commit_us_*``: per batch, from its oldest Submit's arrival to commit;
        ``hooks``: per hook, cumulative ns by phase and ``ns_per_transfer`` over ``ledger.transfers``
        (difference two snapshots to exclude a warm-up).
        """
        c = self.counters
        batches = c["batches"]
        buffered = [k.transport.get_write_buffer_size() for k in self._connections if k.transport is not None]
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
            "shed_over_fair_share": c["shed_over_fair_share"],
            "queue_transfers": self._queued,
            "queue_submits": len(self._queue),
            "queue_limit": self.config.queue_limit,
            "fair_share": self._fair_share(),
            "queue_peak_transfers": self._queue_peak,
            "oldest_enqueue_to_commit_us_mean": self._wait_ns_sum / batches / 1e3 if batches else 0.0,
            "oldest_enqueue_to_commit_us_max": self._wait_ns_max / 1e3,
            "engine_s": self._engine_ns / 1e9,
            "batch_size_mean": c["transfers"] / batches if batches else 0.0,
            "batch_sizes": {
                f"{1 << (b - 1)}-{(1 << b) - 1}" if b else "0": int(k) for b, k in enumerate(self.batch_sizes) if k
            },
            "write_buffered_bytes": sum(w for w in buffered),
            "write_buffered_max_bytes": max(buffered, default=0),
            "errors": dict(self.errors),
            "slow_consumers": c["slow_consumers"],
            "partial_frames_dropped": c["partial_frames_dropped"],
            "admin": {k.removeprefix("admin_"): v for k, v in c.items() if k.startswith("admin_")},
            "auth": {
                "enabled": self.secrets is not None,
                "operators_enrolled": 0 if self.secrets is None else len(self.secrets.operators),
                "failures": c["auth_failures"],
                "operator_logins": c["auth_operator"],
                "admin_logins": c["auth_admin"],
            },
        }
        if self.journal is not None:
            stats["journal"] = self.journal.stats()
        if self.recovery is not None:
            r = self.recovery
            stats["recovery"] = {
                "entries": r.entries,
                "batches": r.batches,
                "transfers": r.transfers,
                "admin_ops": r.admin_ops,
                "truncated_bytes": r.truncated_bytes,
                "seconds": self.recovery_s,
                "message": r.message,
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
                    "background_ns": t.background_ns,
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
    server = Server(config)  # builds (and recovers) the ledger before listening: clients never wait on it
    host, port = await server.start()
    print(f"listening on {host}:{port}", file=out, flush=True)
    # After the listening line, which parents read first (some merge stderr into stdout).
    for line in server.startup_notes():
        print(line, file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    failed = server.failed
    assert failed is not None
    failed.add_done_callback(lambda _: stop.set())  # a failed journal stops the server too
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await stopped
    finally:
        stopped.cancel()
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
    return 1 if failed.done() else 0


class ServerThread:
    """A Server on its own uvloop in a background thread: for tests and in-process calibration.

    Use as a context manager; ``address`` is (host, port) once started.
    """

    def __init__(
        self, config: ServerConfig, *, hooks: Sequence[Hook] | None = None, secrets: Secrets | None = None
    ) -> None:
        self.config = config
        self.server = Server(config, hooks=hooks, secrets=secrets)
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
