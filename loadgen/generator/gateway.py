"""Open-loop operator gateways: one TCP connection per operator, sending on schedule.

An operator gateway plays an authorised operator (a commercial bank in e-CNY's two tiers)
submitting its customers' payments. Its schedule is fixed before the run (``loadgen.generator.schedule``).
Every tick it sends *everything whose scheduled time has passed*, in frames of up to
``batch_max`` transfers, whether or not earlier replies have come back; latency is measured from
each payment's scheduled time (``loadgen.generator.measure``). The tick is part of the system being
measured: a payment waits up to one tick in the operator's outbox, and that wait is in its latency.

Transfers come from a pool generated before the run (``Workload.batch`` is too slow to call in the
measured region) from the scenario's workload (``LoadConfig.workload``), and replayed with fresh
ids; every other pass swaps payer and payee so the replayed stream keeps balances near their
seeded distribution, and each pass plants the behaviours its own ids carry, so their labels hold
in every pass (``loadgen.generator.workload.ReplayPool``).
Record timestamps follow the workload's simulated business clock, derived from the schedule, so
all gateways share one simulated clock; the wall-clock schedule stays on the generator side.

Several processes (``processes > 1``, multiprocessing spawn) each run a share of the gateways in
their own uvloop event loop. Each connects and generates its pools, reports ready, and waits for a
common start time on the monotonic clock (system-wide on Linux), so all schedules share one
origin; at the end each sends back its ``Measurement``, and the parent merges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
import traceback
import typing
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from engine import wire
from engine.auth import ROLE_OPERATOR, Secrets, load_secrets
from engine.client_session import ClientHandshake, HandshakeRefused, MissingSecret
from loadgen.generator.measure import Measurement
from loadgen.generator.ramp import parse_ramp, ramp_schedule
from loadgen.generator.schedule import Arrival, gateway_schedule
from loadgen.generator.signed_pool import SignedPool, SignedPoolParams, signed_pool
from loadgen.generator.workload import DEFAULT_SEED, ReplayPool, ScenarioWorkload, Workload, WorkloadConfig

#: Stop writing to a connection whose unsent bytes exceed this (the server is not reading): the
#: due transfers stay due, get sent late and show up as generator lag and latency.
WRITE_BUFFER_LIMIT = 64 << 20
CONNECT_TIMEOUT_S = 10.0
#: A cbdc-bench server answers a hello at once (it builds its ledger before listening), so a
#: service that says nothing for this long is not one.
HANDSHAKE_TIMEOUT_S = 5.0


#: Transfers per batch of a gateway's signed pool (its cache granularity, not the Submit size).
SIGNED_POOL_BATCH = 1024
#: Longest auto tick (``LoadConfig.tick_ns``): a payment waits up to one tick in its operator's outbox.
AUTO_TICK_MAX_S = 0.005
#: Longest auto tick of a signed load (``LoadConfig.signed``). Signed rates stay far below the ~1,000
#: transfers a frame of the auto rule, so their tick is this cap. A tick's Submits go to the
#: validators together, so the tick sets both a payment's wait in its outbox and the size of the
#: parcels it is verified in. Issue 19 (README, "Signed payments"; 2 validators, 19,000/s, six
#: alternated pairs, shared machine): 3 ms against 5 ms lowered the p99 in all six pairs (16.6-39.4
#: against 28.3-102.2 ms) for ~4 us more CPU per payment in the generator and the server
#: (more frames); 2 ms cost ~6-13 us more and its p99 was no better than 3 ms's.
SIGNED_AUTO_TICK_MAX_S = 0.003


class LoadConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parameters of one open-loop load run (what a result file records as its load)."""

    host: str = "127.0.0.1"
    port: int = 7878
    rate_tps: float = 50_000.0
    seconds: float = 10.0
    warmup: float = 2.0
    operators: int = 2
    processes: int = 1
    arrival: str = "constant"
    tick_us: int = 0  # 0 = auto: frames of about 1,000 transfers, tick within 1..5 ms (signed: 1..3 ms)
    batch_max: int = 8192
    drain: float = 5.0  # seconds to wait for outstanding replies after the schedule ends
    seed: int = DEFAULT_SEED
    pool: int = 1 << 16  # pre-generated transfers per gateway, replayed with fresh ids
    #: Where the operators' (and the admin's) secrets are, for a server with authentication on:
    #: a secrets TOML path or "env" (engine.auth.load_secrets); "" = authentication off.
    secrets: str = ""
    #: Send SignedSubmit, from a signed pool covering the whole schedule (signed ahead of it, cached
    #: on disk): for a server that requires signatures (profiles signed, signed-full).
    signed: bool = False
    #: ``--ramp FROM:TO:DURATION[,...]`` (``loadgen.generator.ramp``): the rate along stages from the
    #: start, then holding the last stage's end rate; "" = ``rate_tps`` throughout.
    ramp: str = ""
    #: What the scenario fixes about the payments (its ``[workload]``, the hooks' list and caps):
    #: every gateway generates ``workload.config(accounts=<the server's>, seed=seed)``.
    workload: ScenarioWorkload = ScenarioWorkload()
    #: ``--trove-flushes N``: after the drain the final probe waits (``FLUSH_WAIT_S`` at most) until
    #: the server's trove has written N memtables whole (and for a flush running then, always), so the
    #: result prices the window's trove rows at a finished flush's CPU (``loadgen.plan.inputs``). The
    #: capacity plan's runs ask for 2: the first flush also pays first-touch memory (page faults of
    #: fresh allocations: 1.6x the second's CPU per row, issue 21).
    trove_flushes: int = 0

    def __post_init__(self) -> None:
        if self.trove_flushes < 0:
            raise ValueError(f"--trove-flushes must be >= 0, got {self.trove_flushes}")
        if self.rate_tps <= 0 or self.seconds <= 0:
            raise ValueError("--rate and --seconds must be > 0")
        if self.warmup < 0 or self.drain < 0:
            raise ValueError("--warmup and --drain must be >= 0")
        if not 1 <= self.operators <= 1024:
            raise ValueError(f"--operators must be in 1..1024, got {self.operators}")
        if not 1 <= self.processes <= self.operators:
            raise ValueError(f"--processes must be in 1..operators ({self.operators}), got {self.processes}")
        if self.batch_max < 1 or self.pool < 1:
            raise ValueError("--max-batch and pool must be >= 1")
        if self.tick_us < 0:
            raise ValueError("--tick-us must be >= 0 (0 = auto)")
        Arrival(self.arrival)
        if self.ramp:
            parse_ramp(self.ramp)

    @property
    def tick_ns(self) -> int:
        if self.tick_us:
            return self.tick_us * 1000
        return self.auto_tick_ns(SIGNED_AUTO_TICK_MAX_S if self.signed else AUTO_TICK_MAX_S)

    def auto_tick_ns(self, max_s: float) -> int:
        """The auto tick at this rate when it is at most ``max_s`` (``AUTO_TICK_MAX_S``, signed
        ``SIGNED_AUTO_TICK_MAX_S``; a result file made under another cap: ``loadgen.plan.inputs``)."""
        # About 1,000 transfers per frame (framing costs dominate below that), but at least 1 ms and
        # at most ``max_s``: a payment waits tick/2 on average in its operator's outbox.
        per_gateway_tps = self.rate_tps / self.operators
        return int(min(max(1000 / per_gateway_tps, 0.001), max_s) * 1e9)

    @property
    def late_ns(self) -> int:
        """A send is late when it missed its tick by more than 2 ms (event-loop timers have 1 ms steps)."""
        return self.tick_ns + 2_000_000

    @property
    def schedule_seconds(self) -> float:
        return self.warmup + self.seconds

    def seconds_total(self) -> int:
        return int(np.ceil(self.warmup + self.seconds + self.drain)) + 1

    def new_measurement(self) -> Measurement:
        return Measurement(
            seconds_total=self.seconds_total(),
            warmup_ns=int(self.warmup * 1e9),
            window_end_ns=int((self.warmup + self.seconds) * 1e9),
            late_ns=self.late_ns,
        )

    def shares(self) -> list[list[int]]:
        """Gateway (operator) numbers run by each process, round-robin."""
        return [list(range(p, self.operators, self.processes)) for p in range(self.processes)]


class GatewayError(ConnectionError):
    """The server refused a gateway (wrong protocol, unknown operator, connection lost...)."""


class Handler(typing.Protocol):
    codec: wire.Codec

    def on_message(self, msg: Any, now_ns: int) -> None: ...
    def on_bytes(self, n: int) -> None: ...
    def fail(self, why: str) -> None: ...
    def on_closed(self, exc: Exception | None) -> None: ...


class FrameProtocol(asyncio.Protocol):
    """Frames in, messages dispatched to a handler; one clock read per received chunk."""

    def __init__(self, gateway: Handler) -> None:
        self.gateway = gateway
        self.reader = wire.FrameReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        g = self.gateway
        g.on_bytes(len(data))
        try:
            bodies = self.reader.feed(data)
        except wire.FrameTooLarge as exc:
            g.fail(f"server sent an oversized frame: {exc}")
            return
        decode = g.codec.server_decoder.decode
        for body in bodies:
            try:
                msg = decode(body)
            except msgspec.DecodeError as exc:
                g.fail(f"undecodable frame from the server: {exc}")
                return
            g.on_message(msg, now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.on_closed(exc)


class AsyncHandshake:
    """Drives a ``ClientHandshake`` over an asyncio transport; ``welcome`` resolves when it is done.

    ``who`` names this side in errors ("operator 3", "the admin connection").
    """

    def __init__(
        self, operator: int, client: str, role: bytes, secrets: Secrets | None, codec: wire.Codec, who: str
    ) -> None:
        secret = None if secrets is None else secrets.secret(role, operator)
        self.handshake = ClientHandshake(operator, client, role=role.decode(), secret=secret)
        self.codec = codec
        self.who = who
        self.welcome: asyncio.Future[wire.Welcome] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    @property
    def pending(self) -> bool:
        return not self.welcome.done()

    def start(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.write(self.codec.frame(self.handshake.hello()))

    def on_message(self, msg: wire.Welcome | wire.Challenge | wire.Error) -> None:
        """A handshake message from the server (while ``pending``)."""
        if not self.pending:
            return
        try:
            reply = self.handshake.step(msg)
        except MissingSecret:
            self.welcome.set_exception(
                GatewayError(
                    f"the server requires authentication and {self.who} has no secret: pass --secrets FILE "
                    "(or 'env' with CBDC_ADMIN_SECRET / CBDC_OPERATOR_SECRET_<n> set)"
                )
            )
            return
        except HandshakeRefused as exc:
            self.welcome.set_exception(GatewayError(f"server refused {self.who}: {exc}"))
            return
        if reply is not None and self.transport is not None:
            self.transport.write(self.codec.frame(reply))
        elif self.handshake.welcome is not None:
            self.welcome.set_result(self.handshake.welcome)

    def on_closed(self, error: GatewayError) -> None:
        if self.pending:
            self.welcome.set_exception(error)
            with contextlib.suppress(BaseException):  # retrieved: nobody may be awaiting it any more
                self.welcome.exception()

    def fail(self, why: str, address: str) -> None:
        """The peer sent something that is not the protocol (``why``) while the handshake was pending."""
        self.on_closed(GatewayError(f"{address} is not a cbdc-bench server ({self.who}: {why})"))

    async def wait(self, address: str) -> wire.Welcome:
        """The server's Welcome; a specific GatewayError when the peer says nothing or something else."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.welcome), HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            raise GatewayError(
                f"{address} accepted a connection but sent no handshake reply to {self.who} within "
                f"{HANDSHAKE_TIMEOUT_S:g} s: is it a cbdc-bench server (`cbdc-bench serve`)?"
            ) from None


class Gateway:
    """One operator's connection, schedule and transfer pool."""

    def __init__(
        self,
        operator: int,
        config: LoadConfig,
        measurement: Measurement,
        codec: wire.Codec,
        secrets: Secrets | None = None,
    ) -> None:
        self.operator = operator
        self.secrets = secrets
        self.config = config
        self.m = measurement
        self.codec = codec
        if config.ramp:
            self.schedule = ramp_schedule(
                parse_ramp(config.ramp),
                seconds=config.schedule_seconds,
                gateways=config.operators,
                gateway=operator,
                arrival=config.arrival,
                seed=config.seed,
            )
        else:
            self.schedule = gateway_schedule(
                rate_tps=config.rate_tps,
                seconds=config.schedule_seconds,
                gateways=config.operators,
                gateway=operator,
                arrival=config.arrival,
                seed=config.seed,
            )
        self.pos = 0  # next schedule index to send
        self.seq = 0
        self.id_base = 0  # first transfer id: the server's next_transfer_id, so a reused server sees fresh ids
        self.pending: dict[int, tuple[int, int]] = {}  # seq -> schedule span [a, b)
        self.start_ns = 0
        self.transport: asyncio.Transport | None = None
        self.handshake: AsyncHandshake | None = None
        self.closed = False
        self.failure: str | None = None
        self.replies: dict[int, asyncio.Future[Any]] = {}
        self.batch_max = config.batch_max
        self._replay: ReplayPool | None = None
        self._signed: SignedPool | None = None
        self._sim_start_ns = 0
        self._sim_speed = 0.0

    # ---- setup (outside the measured region) -------------------------------------------------

    async def connect(self) -> wire.Welcome:
        loop = asyncio.get_running_loop()
        self.handshake = AsyncHandshake(
            self.operator, "cbdc-bench loadgen", ROLE_OPERATOR, self.secrets, self.codec, f"operator {self.operator}"
        )
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: FrameProtocol(self), self.config.host, self.config.port),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise GatewayError(
                f"cannot connect to the server at {self.config.host}:{self.config.port} ({exc}); "
                "is `cbdc-bench serve` running there?"
            ) from exc
        self.transport = typing.cast(asyncio.Transport, transport)
        self.handshake.start(self.transport)
        welcome = await self.handshake.wait(f"{self.config.host}:{self.config.port}")
        self.id_base = welcome.next_transfer_id
        record_bytes = wire.TRANSFER_DTYPE.itemsize
        self.batch_max = max(
            1, min(self.config.batch_max, welcome.max_batch, (welcome.max_frame_bytes - 64) // record_bytes)
        )
        return welcome

    def prepare(self, accounts: int, payer_range: tuple[int, int] | None = None) -> None:
        """Generate the transfer pool for a ledger of ``accounts`` accounts.

        ``payer_range``: the accounts this operator may debit, when the server enforces ownership.
        """
        c = self.config
        if c.signed:
            self._prepare_signed(accounts, payer_range)
            return
        workload = Workload(self.workload_config(accounts), stream=1 + self.operator)
        # In chunks: the workload re-sends recent ids (duplicates) only from its second batch on.
        self._replay = ReplayPool(
            workload, c.pool, chunk=1024, operator=self.operator, first_id=self.id_base, payer_range=payer_range
        )
        # A server that already took ids from this operator (an earlier load phase) continues
        # its simulated clock where that phase left it, about operators * ids payments later:
        # a clock that jumped back would keep yesterday's daily wallet totals for today.
        resumed_payments = self.id_base * c.operators
        self._sim_start_ns = workload.config.start_ns + int(resumed_payments * workload.ns_per_payment)
        # Simulated ns per real ns: all gateways together advance the simulated clock by
        # ns_per_payment per payment at the offered rate.
        self._sim_speed = c.rate_tps * workload.ns_per_payment / 1e9

    def _prepare_signed(self, accounts: int, payer_range: tuple[int, int] | None) -> None:
        """Sign every transfer of the schedule ahead of it (signatures cover ids and timestamps, so a
        signed pool is never replayed); the workload's own timestamps stand."""
        n = max(len(self.schedule), 1)
        params = SignedPoolParams(
            workload=self.workload_config(accounts),
            batches=-(-n // SIGNED_POOL_BATCH),
            batch_size=SIGNED_POOL_BATCH,
            operator=self.operator,
            first_id=self.id_base,
            payer_range=payer_range,
            stream=1 + self.operator,
        )
        self._signed = signed_pool(params)

    def workload_config(self, accounts: int) -> WorkloadConfig:
        """The workload this gateway generates for a server of ``accounts`` accounts."""
        return self.config.workload.config(accounts=accounts, seed=self.config.seed)

    # ---- hot path ----------------------------------------------------------------------------

    def send_due(self, now_ns: int) -> None:
        """Send every transfer scheduled at or before ``now_ns`` (monotonic)."""
        transport = self.transport
        if transport is None or self.closed or (self._replay is None and self._signed is None):
            return
        rel = now_ns - self.start_ns
        end = int(np.searchsorted(self.schedule, rel, side="right"))
        pool_n = self.config.pool
        while self.pos < end:
            if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                return
            a = self.pos
            if self._signed is not None:
                b = min(end, a + self.batch_max)
                frame = self.codec.frame(
                    wire.SignedSubmit(
                        seq=self.seq,
                        transfers=self._signed.records[a:b].tobytes(),
                        signatures=self._signed.signatures[a:b].tobytes(),
                    )
                )
                self._sent(transport, frame, a, b)
                continue
            assert self._replay is not None
            b = min(end, a + self.batch_max, a + pool_n - a % pool_n)  # a frame stays within one pass
            records = self._replay.take(a, b - a)
            records["timestamp_ns"] = self._sim_start_ns + (self.schedule[a:b] * self._sim_speed).astype(np.int64)
            self._sent(transport, self.codec.frame(wire.Submit(seq=self.seq, transfers=records.tobytes())), a, b)

    def _sent(self, transport: asyncio.Transport, frame: bytes, a: int, b: int) -> None:
        """Write one Submit frame (numbered ``self.seq``) carrying schedule positions [a, b)."""
        self.pending[self.seq] = (a, b)
        self.seq += 1
        transport.write(frame)
        self.m.bytes_sent += len(frame)
        self.pos = b
        self.m.on_sent(self.schedule[a:b], time.monotonic_ns() - self.start_ns)

    def on_bytes(self, n: int) -> None:
        """Bytes received from the server (result files give wire bytes per payment, issue 12)."""
        self.m.bytes_received += n

    def on_message(self, msg: Any, now_ns: int) -> None:
        match msg:
            case wire.Results(seq=seq, codes=blob):
                span = self.pending.pop(seq, None)
                codes = wire.codes_from_bytes(blob)
                if span is None or len(codes) != span[1] - span[0]:
                    self.m.protocol_errors += 1
                    return
                self.m.on_results(self.schedule[span[0] : span[1]], codes, now_ns - self.start_ns)
            case wire.Welcome() | wire.Challenge():
                if self.handshake is not None:
                    self.handshake.on_message(msg)
            case wire.Error(code=code, message=message, ref=ref):
                self.m.errors[code] = self.m.errors.get(code, 0) + 1
                span = self.pending.pop(ref, None) if ref >= 0 else None
                if span is not None:
                    self.m.error_transfers += span[1] - span[0]
                elif self.handshake is not None and self.handshake.pending:
                    self.handshake.on_message(msg)
                else:
                    self.failure = self.failure or f"server error {code}: {message}"
            case _:
                req = getattr(msg, "req", None)
                fut = self.replies.pop(req, None) if req is not None else None
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                else:
                    self.m.protocol_errors += 1

    def fail(self, why: str) -> None:
        self.failure = self.failure or why
        if self.handshake is not None and self.handshake.pending:
            self.handshake.fail(why, f"{self.config.host}:{self.config.port}")
        if self.transport is not None:
            self.transport.abort()

    def on_closed(self, exc: Exception | None) -> None:
        self.closed = True
        if self.handshake is not None:
            self.handshake.on_closed(GatewayError(f"server closed the connection of operator {self.operator}"))
        if self.pending or self.pos < len(self.schedule):
            self.failure = self.failure or f"connection of operator {self.operator} lost: {exc or 'closed by server'}"

    @property
    def done(self) -> bool:
        return self.closed or (self.pos >= len(self.schedule) and not self.pending)

    def finish(self, end_rel_ns: int) -> None:
        """Account for everything without a reply at the end of the drain; close."""
        for a, b in self.pending.values():
            self.m.on_unanswered(self.schedule[a:b], end_rel_ns, sent=True)
        self.pending.clear()
        self.m.on_unanswered(self.schedule[self.pos :], end_rel_ns, sent=False)
        self.pos = len(self.schedule)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


# ---- one process's share ---------------------------------------------------------------------


class ShareReport(msgspec.Struct):
    """What a generator process returns; numpy state travels pickled inside ``measurement``."""

    measurement: Any
    failures: list[str]
    welcome: Any


async def run_share(
    config: LoadConfig,
    operators: list[int],
    wait_start: Callable[[wire.Welcome], int],
    watch: Callable[[Measurement], None] | None = None,
) -> ShareReport:
    """Connect, prepare, wait for the common start, run the schedule, drain and report.

    ``wait_start`` is called when everything is ready and returns the start time (monotonic ns);
    ``watch`` gets the measurement as soon as it exists (live progress reads it).
    """
    codec = wire.Codec()
    m = config.new_measurement()
    if watch is not None:
        watch(m)
    secrets = load_secrets(config.secrets)
    gateways = [Gateway(op, config, m, codec, secrets) for op in operators]
    try:
        welcomes = [await g.connect() for g in gateways]
        for g, w in zip(gateways, welcomes, strict=True):
            g.prepare(w.accounts, (w.owned_from, w.owned_to) if w.ownership else None)
        m.scheduled = sum(len(g.schedule) for g in gateways)
        m.scheduled_measured = sum(
            len(g.schedule) - int(np.searchsorted(g.schedule, m.warmup_ns, side="left")) for g in gateways
        )
        start_ns = wait_start(welcomes[0])
        for g in gateways:
            g.start_ns = start_ns
        tick = config.tick_ns
        window_start = start_ns + m.warmup_ns
        window_end = start_ns + m.window_end_ns
        deadline = window_end + int(config.drain * 1e9)
        # Generator CPU over the measured window, read at the first tick past each edge.
        cpu_start: float | None = None
        cpu_end: float | None = None
        now = time.monotonic_ns()
        if start_ns > now:
            await asyncio.sleep((start_ns - now) / 1e9)
        next_tick = start_ns
        while True:
            now = time.monotonic_ns()
            if cpu_start is None and now >= window_start:
                cpu_start = time.process_time()
            if cpu_end is None and now >= window_end:
                cpu_end = time.process_time()
            for g in gateways:
                g.send_due(now)
            if all(g.done for g in gateways) or now >= deadline:
                break
            # Ticks are anchored to the start, not to the previous wake-up, so a late wake-up
            # does not shift the grid; anything overdue is caught up on the next tick.
            next_tick += tick
            if next_tick < now:
                next_tick = now + tick - (now - start_ns) % tick
            await asyncio.sleep((next_tick - time.monotonic_ns()) / 1e9)
        end_rel = time.monotonic_ns() - start_ns
        for g in gateways:
            g.finish(end_rel)
        now_cpu = time.process_time()
        m.generator_cpu_s = (now_cpu if cpu_end is None else cpu_end) - (now_cpu if cpu_start is None else cpu_start)
        failures = [f"operator {g.operator}: {g.failure}" for g in gateways if g.failure]
        return ShareReport(measurement=m, failures=failures, welcome=msgspec.structs.asdict(welcomes[0]))
    finally:
        for g in gateways:
            if g.transport is not None and not g.transport.is_closing():
                g.transport.abort()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop (asyncio's where uvloop is unavailable)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _child_main(config: LoadConfig, operators: list[int], conn: Any) -> None:
    """Entry point of a spawned generator process: report ready, get start, send the report."""

    def wait_start(welcome: wire.Welcome) -> int:
        conn.send(("ready", os.getpid()))
        msg = conn.recv()
        if msg[0] != "start":
            raise SystemExit(0)
        return int(msg[1])

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            report = runner.run(run_share(config, operators, wait_start))
        conn.send(("report", report))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


#: Time between "all generators ready" and the common start: lets every process leave its wait.
START_MARGIN_NS = 50_000_000


async def run_load(
    config: LoadConfig,
    *,
    on_start: Callable[[int], None] | None = None,
    watch: Callable[[Measurement], None] | None = None,
) -> tuple[Measurement, list[str], dict[str, Any]]:
    """Run the load described by ``config``; merged measurement, failures and server welcome.

    ``on_start`` (if given) is called with the common start time (monotonic ns) once every
    generator is ready; callers use it to schedule their own probes (e.g. server stats).
    ``watch`` gets this process's measurement while it fills (with one generator process only:
    the others' live in their processes).
    """
    shares = config.shares()
    if config.processes == 1:

        def wait_start(welcome: wire.Welcome) -> int:
            start = time.monotonic_ns() + START_MARGIN_NS
            if on_start is not None:
                on_start(start)
            return start

        report = await run_share(config, shares[0], wait_start, watch)
        return report.measurement, report.failures, report.welcome
    return await _run_processes(config, shares, on_start)


async def _run_processes(
    config: LoadConfig, shares: list[list[int]], on_start: Callable[[int], None] | None
) -> tuple[Measurement, list[str], dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    conns: list[Any] = []
    finished = False
    try:
        for share in shares:
            parent_conn, child_conn = ctx.Pipe()
            p = ctx.Process(target=_child_main, args=(config, share, child_conn), daemon=True)
            p.start()
            child_conn.close()
            procs.append(p)
            conns.append(parent_conn)
        setup_timeout = 60.0 + config.pool * config.operators / 200_000
        for conn in conns:
            msg = await _recv(conn, setup_timeout)
            if msg[0] != "ready":
                raise GatewayError(f"generator process failed during setup: {msg[1]}")
        start = time.monotonic_ns() + START_MARGIN_NS
        if on_start is not None:
            on_start(start)
        for conn in conns:
            conn.send(("start", start))
        run_timeout = config.warmup + config.seconds + config.drain + 60.0
        merged = config.new_measurement()
        failures: list[str] = []
        welcome: dict[str, Any] = {}
        for conn in conns:
            msg = await _recv(conn, run_timeout)
            if msg[0] != "report":
                raise GatewayError(f"generator process failed: {msg[1]}")
            report: ShareReport = msg[1]
            merged.merge(report.measurement)
            failures += report.failures
            welcome = report.welcome
        finished = True
        return merged, failures, welcome
    finally:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", 0))
            conn.close()
        for p in procs:
            if not finished:  # error or cancellation: do not let them run out their schedules
                p.terminate()
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


async def _recv(conn: Any, timeout: float) -> Any:
    """The next message from a child's pipe, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not conn.poll():
        if loop.time() > deadline:
            raise GatewayError(f"no word from a generator process within {timeout:.0f} s")
        await asyncio.sleep(0.005)
    try:
        return conn.recv()
    except EOFError as exc:
        raise GatewayError("a generator process exited without reporting (see its stderr)") from exc
