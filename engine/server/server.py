"""The wiring: ``Server`` builds the ledger, the handshake, the batcher and the admin handler,
accepts connections, dispatches their frames, sweeps timeouts and stops on a fatal fault."""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.auth import Secrets, load_secrets
from engine.build_progress import (
    PHASE_ACCOUNTS,
    PHASE_JOURNAL,
    PHASE_KEYS,
    BuildProgress,
    BuildStep,
    chunk_progress,
    unsized_phase,
)
from engine.clock import SequencerClock
from engine.hooks.base import Hook
from engine.journal import Journal, JournalLock, Recovery
from engine.ledger import Ledger, owner_ranges
from engine.memory import peak_rss_bytes
from engine.population import POPULATION_VERSION, Population
from engine.profiles import build_hooks
from engine.server.admin import Admin
from engine.server.batcher import Batcher, QueuedSubmit
from engine.server.config import ServerConfig
from engine.server.connection import Connection
from engine.server.metrics import MetricsEndpoint
from engine.server.recovery import SnapshotChoice, choose_snapshot, journal_exists, open_journal, set_aside_outputs
from engine.server.session import Handshake
from engine.server.snapshots import Snapshotter, snapshot_refusal
from engine.server.sources import ConnectRate, eviction_victim
from engine.server.stats import ServerStats
from engine.signing import ensure_registry
from engine.snapshot import SnapshotSchedule
from engine.validator_api import Validators
from engine.validators import make_validators
from engine.wire import (
    CLIENT_TAGS,
    Authenticate,
    ClientMessage,
    ErrorCode,
    Hello,
    SignedSubmit,
    StatsReply,
    StatsRequest,
    Submit,
)


def build_ledger(
    config: ServerConfig,
    hooks: Sequence[Hook] | None = None,
    *,
    ownership: bool = False,
    from_snapshot: bool = False,
    progress: BuildProgress | None = None,
) -> Ledger:
    """The ledger the load generator expects: the seeded population's initial state.

    ``hooks`` replaces the profile's hooks (for tests and embedding); None builds the profile.
    ``ownership`` gives each operator its contiguous range of accounts (``owner_ranges``).
    ``from_snapshot``: the state is about to be read from a snapshot, so the population (a minute
    at 10^8 accounts) is not drawn: the columns are zeros, lazily mapped by the kernel, so that the
    snapshot's bytes are the first written to each page (filling them first cost a second pass
    over the state's memory: 1.2 s of a 5 s restart at 3x10^7 accounts).
    ``progress`` receives the build's steps (``engine.build_progress``: accounts, then hooks).
    """
    balance: int | np.ndarray = 0
    account_bits: np.ndarray | None = None
    if from_snapshot:
        balance = np.zeros(config.accounts, dtype=np.uint32)
        account_bits = np.zeros(config.accounts, dtype=np.uint8)
    else:
        population = Population(config.population())
        if progress is not None:
            progress(BuildStep(PHASE_ACCOUNTS, 0, config.accounts, "accounts"))
        balance, account_bits = population.build_state(progress=chunk_progress(progress, PHASE_ACCOUNTS, "accounts"))
    return Ledger(
        config.accounts,
        balance_fen=balance,
        account_bits=account_bits,
        operators=config.operators,
        hooks=build_hooks(config.profile, config.scenario, trove_dir=config.trove) if hooks is None else hooks,
        owners=owner_ranges(config.accounts, config.operators) if ownership else None,
        clock=SequencerClock.for_accounts(config.accounts, config.payments_per_account_per_day),
        progress=progress,
    )


class Server:
    """The payment server; ``start()`` on a running loop, ``close()`` to stop.

    ``hooks`` replaces the profile's hooks (tests, embedding); ignored in echo mode.
    ``build_progress`` receives the start-up's steps (``engine.build_progress``) before it listens.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        hooks: Sequence[Hook] | None = None,
        secrets: Secrets | None = None,
        build_progress: BuildProgress | None = None,
    ) -> None:
        self.config = config
        #: None = authentication off (and no account ownership): the benchmark's default.
        self.secrets = secrets if secrets is not None else load_secrets(config.secrets)
        self.outputs_set_aside: list[tuple[Path, Path]] = []
        self.ledger: Ledger | None = None
        #: Seconds spent building the ledger and its hooks' state (0 in echo mode).
        self.build_s = 0.0
        snapshot = SnapshotChoice()
        if not config.echo:
            hooks = build_hooks(config.profile, config.scenario, trove_dir=config.trove) if hooks is None else hooks
            for hook in hooks:
                hook.journalled = bool(config.journal)
            if journal_exists(config) and all(h.snapshots for h in hooks):
                snapshot = choose_snapshot(config)
            for hook in hooks:
                hook.resuming = snapshot.path is not None
            if journal_exists(config) and snapshot.path is None:
                self.outputs_set_aside = set_aside_outputs(hooks)
            started = time.perf_counter()
            self.ledger = build_ledger(
                config,
                hooks,
                ownership=self.secrets is not None,
                from_snapshot=snapshot.path is not None,
                progress=build_progress,
            )
            self.build_s = time.perf_counter() - started
        self.encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ClientMessage)
        self.metrics = ServerStats()
        self.handshake = Handshake(config, self.secrets, self.ledger, self.metrics)
        self.batcher = Batcher(
            config,
            self.ledger,
            self.metrics,
            self.encoder,
            require_hello=self.handshake.require_hello,
            on_fatal=self._fail,
            on_journal_failed=self._journal_failed,
        )
        self.admin = Admin(
            config,
            self.ledger,
            self.secrets,
            self.metrics,
            require_hello=self.handshake.require_hello,
            drain=self.drain,
            failed=self._has_failed,
            on_journal_failed=self._journal_failed,
        )
        self._connections: set[Connection] = set()
        self._connect_rate = ConnectRate(config.connect_rate_per_source, config.max_unauthenticated)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        #: Set when the server must stop (the journal failed); ``serve`` waits on it too.
        self.failed: asyncio.Future[str] | None = None
        self.journal: Journal | None = None
        self._journal_lock: JournalLock | None = None
        self.recovery: Recovery | None = None
        self.recovery_s = 0.0
        self._journal_notes: list[str] = []
        self.snapshotter: Snapshotter | None = None
        if config.journal:
            assert self.ledger is not None
            with unsized_phase(build_progress, PHASE_JOURNAL, "snapshot and replay"):
                opened = open_journal(
                    config,
                    self.ledger,
                    log=lambda line: print(f"journal: {line}", file=sys.stderr, flush=True),
                    snapshot=snapshot,
                )
            self.journal, self._journal_lock, self.recovery = opened.journal, opened.lock, opened.recovery
            self.recovery_s, self._journal_notes = opened.seconds, opened.notes
            self.batcher.journal = self.admin.journal = self.journal
            self.journal.on_durable = self.batcher.release
            schedule = SnapshotSchedule.parse(config.snapshot_every)
            refusal = snapshot_refusal(self.ledger)
            if refusal and schedule.enabled:
                self._journal_notes.append(refusal)
            elif schedule.enabled:
                self.snapshotter = self.batcher.snapshotter = self.admin.snapshotter = Snapshotter.for_config(
                    config,
                    self.ledger,
                    self.journal,
                    log=lambda line: print(f"snapshot: {line}", file=sys.stderr, flush=True),
                )
        #: ``--metrics-port``: the Prometheus endpoint, from ``start()`` to ``close()``.
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.validators: Validators | None = None
        if config.signature_mode != "off":
            with unsized_phase(build_progress, PHASE_KEYS):
                registry = ensure_registry(config.seed, config.accounts)
            self.validators = make_validators(
                config.validators,
                registry,
                nice=config.validator_nice,
                min_parcel=config.validator_min_parcel,
                policy=config.validator_policy,
            )
            self.batcher.validators = self.validators
            self.batcher.signatures_required = config.signature_mode == "required"

    @property
    def counters(self) -> collections.Counter[str]:
        """The server's event counters (``ServerStats.counters``)."""
        return self.metrics.counters

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
        notes += self._journal_notes
        if self.metrics_endpoint is not None:
            notes.append(
                f"metrics: {self.metrics_endpoint.url} (Prometheus; every operator's figures, no authentication)"
            )
        if self.journal is not None:
            notes.append(
                f"journal {cfg.journal} (format 2, fsync {self.journal.policy}), {self.journal.seq} entries: "
                f"{self.journal.policy.promise()}"
            )
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

    # ---- faults ----------------------------------------------------------------------------------

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
        if self.journal is not None:
            self.journal.close()  # no fsync after a failed write or fsync: it is never retried
        self.journal = self.batcher.journal = self.admin.journal = None
        self.batcher.snapshotter = self.admin.snapshotter = None
        self.batcher.clear()
        for conn in list(self._connections):
            conn.error(code, message)
            conn.close()
        if self._server is not None:
            self._server.close()
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(message)

    def _has_failed(self) -> bool:
        return self.failed is not None and self.failed.done()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 picks a free one)."""
        self._loop = self.batcher.loop = asyncio.get_running_loop()
        if self.validators is not None:
            await self.validators.start()
        self.failed = self._loop.create_future()
        self._server = await self._loop.create_server(
            lambda: Connection(self), self.config.host, self.config.port, reuse_address=True
        )
        self._sweep_handle = self._loop.call_later(self._sweep_interval_s, self._sweep)
        if self.journal is not None:  # interval:MS: a timer syncs a quiet server; fsyncs off the loop
            self.journal.start_timer(self._loop.call_later, self._journal_failed, loop=self._loop)
        if self.config.metrics_port is not None:
            self.metrics_endpoint = MetricsEndpoint.start(
                self.stats, self._loop, self.config.metrics_host, self.config.metrics_port
            )
        if self.snapshotter is not None:
            self.snapshotter.call_later = self._loop.call_later
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
            if not conn.session.welcomed and now - conn.connected_at > handshake_s:
                conn.error(
                    ErrorCode.HANDSHAKE_TIMEOUT,
                    f"no completed Hello{' and Authenticate' if self.secrets else ''} within "
                    f"{self.config.handshake_timeout_ms} ms of connecting. Connection closed.",
                )
                conn.close()
            elif conn.partial_since and not conn.paused and now - conn.partial_since > frame_s:
                conn.drop_partial_frame()
                conn.error(
                    ErrorCode.FRAME_TIMEOUT,
                    f"a frame was started but not completed within {self.config.frame_timeout_ms} ms; "
                    "send each frame whole (4-byte length, then that many bytes). Nothing of it applied. "
                    "Connection closed.",
                )
                conn.close()
        if self.snapshotter is not None and not self._has_failed():
            self.snapshotter.maybe_start()  # time-based snapshots of a quiet server; reaps a finished child
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
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        await self.batcher.settle()
        self.batcher.cancel()
        self.drain()
        if self.validators is not None:
            await self.validators.close()
        for conn in list(self._connections):
            conn.error(ErrorCode.SHUTTING_DOWN, "the server is shutting down; reconnect to a running server")
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
        if self.snapshotter is not None:
            self.snapshotter.close()
        if self.journal is not None:
            self.journal.close()
        if self._journal_lock is not None:
            self._journal_lock.release()
        if self.ledger is not None:
            for hook in self.ledger.hooks:
                hook.close()

    # ---- connections (ConnectionOwner) -------------------------------------------------------------

    def connection_made(self, conn: Connection) -> None:
        self.metrics.counters["connections_total"] += 1
        if len(self._connections) >= self.config.max_connections:
            conn.error(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the server already has {len(self._connections)} connections (limit "
                f"{self.config.max_connections}); share connections or raise --max-connections",
            )
            conn.close()
            return
        if not self._connect_rate.allow(conn.source, conn.connected_at):
            self.metrics.counters["connections_rate_limited"] += 1
            conn.error(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"address {conn.source} opened connections faster than {self.config.connect_rate_per_source:g}/s "
                "(--connect-rate-per-source); keep connections open and reuse them. Connection closed.",
            )
            conn.close()
            return
        self._connections.add(conn)
        self._limit_unauthenticated()

    def _limit_unauthenticated(self) -> None:
        """Keep at most ``max_unauthenticated`` connections waiting for their handshake.

        Above it, the oldest waiting connection of the address with the most waiting ones is
        closed (``engine.server.sources``): refusing the new one instead would let idle clients
        keep every operator out, and closing the oldest overall let one churning client evict
        everyone else's connection before its handshake could finish.
        """
        waiting = [c for c in self._connections if not c.session.welcomed and not c.closing]
        if len(waiting) <= min(self.config.max_unauthenticated, self.config.max_connections):
            return
        victim = eviction_victim(waiting)
        assert isinstance(victim, Connection)
        self.metrics.counters["unauthenticated_evicted"] += 1
        victim.error(
            ErrorCode.TOO_MANY_CONNECTIONS,
            f"{self.config.max_unauthenticated} connections were waiting for their handshake "
            f"(--max-unauthenticated); this was the oldest from the address with the most of them ({victim.source}) "
            "and is closed: send Hello right after connecting",
        )
        victim.close()

    def connection_lost(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self.metrics.submitter_left(conn.load)

    def drain(self) -> None:
        """Apply and answer everything queued now (before admin requests and at shutdown)."""
        self.batcher.drain()

    def handle(self, conn: Connection, body: bytes) -> None:
        """One complete frame body from ``conn``: decode it and dispatch by message type."""
        self.metrics.counters["frames"] += 1
        try:
            msg = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            self._reject_shape(conn, body, exc)
            return
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # msgspec raises UnicodeDecodeError (not a DecodeError) for a string that is not
            # UTF-8; uncaught, it escaped data_received and the connection died without an Error
            # (found by fuzzing: tests/fuzz_corpus/invalid-utf8-*).
            conn.error(
                ErrorCode.MALFORMED_FRAME,
                f"frame body is not valid msgpack ({type(exc).__name__}: {exc}); each body must be one msgpack "
                f"array [tag, field...] of exactly the length in the 4-byte prefix, strings in UTF-8",
            )
            return
        except RecursionError:
            # Nesting deeper than the decoder's recursion limit (issue 13): uncaught, it escaped
            # data_received and the connection died with its queued Submits' results. Answer
            # what it queued first, then refuse this frame; framing is intact, so it goes on.
            self._reject_nested(conn)
            return
        if type(msg) is Submit:
            self.batcher.submit(conn, msg)
            return
        if type(msg) is SignedSubmit:
            if self.validators is None:
                conn.error(
                    ErrorCode.UNKNOWN_MESSAGE,
                    f"SignedSubmit {msg.seq}: this server does not verify signatures (serve --signatures "
                    "required|optional); send Submit. Nothing applied.",
                    msg.seq,
                )
            else:
                self.batcher.submit(conn, msg)
            return
        match msg:
            case Hello():
                self.handshake.hello(conn, msg)
            case Authenticate():
                self.handshake.authenticate(conn, msg)
            case StatsRequest(req=req):
                if self.handshake.require_hello(conn, req):
                    conn.send(StatsReply(req, self._stats_for(conn)))
            case _:  # after the Submits received before it, also those still being verified
                self.batcher.after_verified(lambda: self.admin.handle(conn, msg))

    def _reject_nested(self, conn: Connection) -> None:
        """A body nested too deeply to decode: deliver the results queued before it, then refuse it."""
        if conn.load.pending:
            self.drain()
        conn.error(
            ErrorCode.MALFORMED_FRAME,
            "frame body is nested too deeply to decode; client messages are a flat msgpack array "
            "[tag, field...] whose fields are scalars or bytes",
        )

    def _reject_shape(self, conn: Connection, body: bytes, exc: msgspec.ValidationError) -> None:
        """A msgpack body that is not a valid client message: say which part is wrong."""
        try:
            raw = msgspec.msgpack.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raw = None
        except RecursionError:
            self._reject_nested(conn)
            return
        ref = -1
        if isinstance(raw, list) and len(raw) > 1 and type(raw[1]) is int and -(2**63) <= raw[1] < 2**63:
            ref = raw[1]
        if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
            conn.error(
                ErrorCode.MALFORMED_FRAME,
                f"frame body must be a msgpack array [tag, field...] with a string tag ({exc})",
            )
        elif raw[0] not in CLIENT_TAGS:
            conn.error(
                ErrorCode.UNKNOWN_MESSAGE,
                f"unknown message tag {raw[0]!r}; a client may send: {', '.join(sorted(CLIENT_TAGS))}",
                ref,
            )
        else:
            conn.error(
                ErrorCode.BAD_FIELD,
                f"{raw[0]}: {exc} (fields are positional; see engine.wire.{raw[0]} for their types)",
                ref,
            )

    # ---- stats -------------------------------------------------------------------------------------

    def _stats_for(self, conn: Connection) -> dict[str, Any]:
        """What ``conn`` may see of the counters.

        With authentication on, the global figures (every operator's traffic, result codes, shed
        counts, connections) are the admin's: an operator sees only its own (issue 13: they were
        shown to every operator). Without ``--secrets`` every client is trusted, as in the
        benchmarks, and sees everything.
        """
        session = conn.session
        if self.secrets is None or session.admin:
            return self.stats()
        op = session.operator
        return {
            "scope": "operator",
            "operator": op,
            "connections": self.metrics.operator_connections[op],
            "queued_transfers": self.metrics.operator_queued[op],
            "next_transfer_id": 0 if self.ledger is None else int(self.ledger.ids.high[op]) + 1,
        }

    def stats(self) -> dict[str, Any]:
        """Counters for StatsReply, plain JSON-able values; all totals are since the server started.

        ``transfers``/``batches``: through the engine (shed transfers excluded); ``codes``: every
        result code sent, including ``overloaded`` for shed Submits; ``batch_sizes``: engine
        batches per power-of-two size bucket; ``engine_s``: time inside ``apply``;
        ``oldest_enqueue_to_commit_us_*``: per batch, from its oldest Submit's arrival to commit;
        ``hooks``: per hook, cumulative ns by phase and ``ns_per_transfer`` over ``ledger.transfers``
        (difference two snapshots to exclude a warm-up); ``validators``: the signature tier's
        counters (``ValidatorStats``), with signatures on.
        """
        report = self.metrics.report(
            self.config,
            connections=len(self._connections),
            write_buffered=[k.transport.get_write_buffer_size() for k in self._connections if k.transport is not None],
            queue_submits=len(self.batcher.queue),
            fair_share=self.batcher.fair_share(),
            auth_enabled=self.secrets is not None,
            operators_enrolled=0 if self.secrets is None else len(self.secrets.operators),
            journal=self.journal,
            snapshots=self.snapshotter,
            recovery=self.recovery,
            recovery_s=self.recovery_s,
            ledger=self.ledger,
        )
        if self.journal is not None and "journal" in report:
            # Pipelined group commit: applied, written, Results waiting for an fsync to cover them.
            report["journal"]["held_batches"] = len(self.batcher.held)
            report["journal"]["held_transfers"] = self.batcher.held_transfers
        if self.validators is not None:
            # Submits waiting for their verdicts (admin requests waiting behind them are not counted).
            waiting = [entry for entry, _ in self.batcher.verifying if isinstance(entry, QueuedSubmit)]
            report["validators"] = msgspec.to_builtins(self.validators.stats()) | {
                "queue_submits": len(waiting),
                "queue_transfers": sum(entry.transfers for entry in waiting),
            }
        if self.ledger is not None:
            report["build"] = {
                "build_seconds": self.build_s,
                "peak_rss_bytes": peak_rss_bytes(),
                "state_bytes": self.ledger.state_bytes(),
                "population_version": POPULATION_VERSION,
            }
        return report
