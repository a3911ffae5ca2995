"""Admission and group commit: Submits are checked, queued and applied as engine batches.

See ``engine.server`` ("Micro-batching", "Bounded everything", "Durability"): a Submit that
does not fit the queue, or would take its operator past its fair share, is answered OVERLOADED
at once; queued Submits are applied as one ``Ledger.apply`` per batch, journalled, and answered
with one ``Results`` each, joined into one write per connection.

Signatures (issue 19): with a validation tier (``ServerConfig.validators``), a SignedSubmit passes
admission (fair share included, so one operator's flood of bad signatures cannot starve another),
then its transfers go to the tier while the loop goes on; Submits wait in ``verifying``, in arrival
order, until their own and every earlier Submit's verdicts are in, so the queue (and the ledger)
sees them in the order they arrived. Submits admitted within ``VERDICT_HOLD_NS`` of each other
(a generator tick's, one per operator) are applied as one ledger batch even when their verdicts
come back apart (``_hold_for_verdicts``). A transfer with a bad signature is answered BAD_SIGNATURE in
its place in the Submit's Results: it never reaches the ledger, so it does not consume its
transfer id and is not journalled (the journal holds verified transfers only; replay never
re-verifies). If the tier cannot verify (``ValidatorsUnavailable``) the whole Submit is answered
OVERLOADED: nothing applied, safe to retry. An unsigned Submit on a server that requires
signatures is answered BAD_SIGNATURE per transfer. An admin request that arrives while Submits
are being verified waits in ``verifying`` behind them (``after_verified``): it observes, and takes
effect after, every Submit received before it, and before every Submit received after it, as
without signatures (a Balance read right after a Submit shows its payment; a Freeze sent after a
Submit does not refuse it). ``settle`` waits for everything being verified (at shutdown).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from engine.codes import CODE_DTYPE, ResultCode
from engine.hooks.base import note_journal_seqs
from engine.journal import Journal
from engine.ledger import Ledger
from engine.records import TRANSFER_DTYPE
from engine.server.config import RECORD_BYTES, ServerConfig
from engine.server.connection import Connection
from engine.server.snapshots import Snapshotter
from engine.server.stats import ServerStats
from engine.validator_api import Validators, ValidatorsUnavailable
from engine.wire import HEADER, ErrorCode, Results, SignedSubmit, Submit, signed_records

_OVERLOADED = bytes([ResultCode.OVERLOADED])
_BAD_SIGNATURE = bytes([ResultCode.BAD_SIGNATURE])
#: Submits admitted this close together are applied as one ledger batch when their verdicts come
#: back apart (``Batcher._hold_for_verdicts``): a generator tick's Submits arrive within ~0.1 ms.
VERDICT_HOLD_NS = 1_000_000
#: The longest such a wait lasts (one generator tick): then what is queued is applied anyway.
VERDICT_HOLD_MAX_S = 0.005


class QueuedSubmit(msgspec.Struct, gc=False):
    """A Submit waiting in the group-commit queue."""

    conn: Connection
    seq: int
    records: bytes  # the Submit's TRANSFER_DTYPE records, as received
    transfers: int
    cost: int  # counted against queue_limit: its transfers, at least 1
    enqueued_ns: int  # perf_counter_ns at admission
    #: Signature verdicts of every transfer of the Submit when some were bad (``records`` then holds
    #: only the good ones): the reply puts the ledger's codes in the OK places.
    verdicts: np.ndarray | None = None


class Batcher:
    """The group-commit queue in front of the ledger (None in echo mode: every transfer OK).

    ``require_hello`` answers a connection that has not completed the handshake; ``on_fatal`` and
    ``on_journal_failed`` stop the server after a fault that may leave memory ahead of what was
    acknowledged.
    """

    def __init__(
        self,
        config: ServerConfig,
        ledger: Ledger | None,
        metrics: ServerStats,
        encoder: msgspec.msgpack.Encoder,
        *,
        require_hello: Callable[[Connection, int], bool],
        on_fatal: Callable[[ErrorCode, str], None],
        on_journal_failed: Callable[[OSError], None],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.journal: Journal | None = None
        #: Takes the periodic snapshots between batches (``engine.server.snapshots``), if on.
        self.snapshotter: Snapshotter | None = None
        self.metrics = metrics
        self._encoder = encoder
        self._require_hello = require_hello
        self._on_fatal = on_fatal
        self._on_journal_failed = on_journal_failed
        self.queue: collections.deque[QueuedSubmit] = collections.deque()
        self.wait_s = config.flush_wait_s
        self.loop: asyncio.AbstractEventLoop | None = None  # set by Server.start
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._flush_soon = False
        #: The validation tier (None: signatures off) and whether unsigned Submits are refused.
        self.validators: Validators | None = None
        self.signatures_required = False
        #: The longest that verified Submits wait for the verdicts of those admitted with them.
        self.hold_max_s = VERDICT_HOLD_MAX_S
        #: Admitted Submits awaiting verdicts (their own or an earlier one's), and admin requests
        #: waiting for those (``after_verified``), in arrival order.
        self.verifying: collections.deque[tuple[QueuedSubmit | Callable[[], None], asyncio.Future[Any]]]
        self.verifying = collections.deque()
        #: Operators whose signed Submits the validators hold for the rest of their tick (``_parcel_hold_s``).
        self._tick_operators: set[int] = set()
        #: Pipelined group commit (``Journal.defers_acks``, ``--fsync batch``): each applied batch's
        #: journal entry and its Results, by connection, until an fsync covering it returns.
        #: (journal entry, Results frames by connection, transfers); at most ``queue_limit`` transfers.
        self.held: collections.deque[tuple[int, dict[Connection, list[bytes]], int]] = collections.deque()
        self.held_transfers = 0

    # ---- admission -------------------------------------------------------------------------------

    def submit(self, conn: Connection, msg: Submit | SignedSubmit) -> None:
        """Check a Submit and queue it (or send it to the validators), or answer it at once."""
        seq = msg.seq
        if not self._require_hello(conn, seq):
            return
        session = conn.session
        if session.admin:
            conn.error(
                ErrorCode.NOT_PERMITTED,
                f"Submit {seq}: admin connections administer and never submit; connect as an operator. "
                "Nothing applied.",
                seq,
            )
            return
        blob = msg.transfers
        n, extra = divmod(len(blob), RECORD_BYTES)
        if extra:
            conn.error(
                ErrorCode.BAD_RECORDS,
                f"Submit {seq}: transfers blob of {len(blob)} bytes is not a whole number of "
                f"{RECORD_BYTES}-byte TRANSFER_DTYPE records; send records.tobytes(). Nothing applied.",
                seq,
            )
            return
        if n > self.config.max_batch:
            conn.error(
                ErrorCode.BATCH_TOO_LARGE,
                f"Submit {seq} has {n} transfers, above this server's max_batch of {self.config.max_batch} "
                f"(Welcome.max_batch); split it. Nothing applied.",
                seq,
            )
            return
        signatures = b""
        if type(msg) is SignedSubmit:
            try:
                signatures = signed_records(msg)[1]
            except ValueError as exc:
                conn.error(ErrorCode.BAD_SIGNATURES, f"SignedSubmit {seq}: {exc}. Nothing applied.", seq)
                return
        records = np.frombuffer(blob, dtype=TRANSFER_DTYPE)
        if n:
            wrong = records["operator"] != session.operator
            if wrong.any():
                i = int(np.argmax(wrong))
                conn.error(
                    ErrorCode.OPERATOR_MISMATCH,
                    f"Submit {seq}: transfer {i} has operator {int(records['operator'][i])} but this connection "
                    f"said Hello as operator {session.operator}; set every record's operator field to "
                    f"{session.operator}. Nothing applied.",
                    seq,
                )
                return
        metrics = self.metrics
        metrics.counters["submits"] += 1
        if self.signatures_required and type(msg) is not SignedSubmit:
            metrics.counters["unsigned_refused"] += n
            metrics.codes[ResultCode.BAD_SIGNATURE] += n
            conn.send(Results(seq, _BAD_SIGNATURE * n, time.time_ns()))
            return
        cost = n or 1
        # The share is the operator's, summed over all its connections (ServerStats.operator_queued).
        over_share = metrics.operator_queued[session.operator] + cost > self.fair_share()
        if over_share or metrics.queued + cost > self.config.queue_limit:
            # Shed at the edge: answer at once, never touching the ledger or growing the queue.
            metrics.shed(n, over_share)
            conn.send(Results(seq, _OVERLOADED * n, time.time_ns()))
            return
        entry = QueuedSubmit(conn, seq, blob, n, cost, time.perf_counter_ns())
        metrics.enqueued(conn.load, n, cost)
        if type(msg) is SignedSubmit and self.validators is not None and n:
            hold_s = self._parcel_hold_s(self.validators, session.operator)
            self._verify(entry, self.validators.verify_future(blob, signatures, hold_s=hold_s))
        elif self.verifying:  # behind a Submit being verified: keep the arrival order
            self._verify(entry, None)
        else:
            self.queue.append(entry)
            self._schedule_flush()

    # ---- signatures ------------------------------------------------------------------------------

    def _parcel_hold_s(self, validators: Validators, operator: int) -> float:
        """How long this signed Submit's transfers may wait for the other operators' Submits of its
        tick before they go to the validators (0: go now): until every connected operator has sent
        one since the hold began, at most ``validator_gather_us``. A generator sends its operators'
        Submits back to back, but the second often arrives after the loop has sent the first to a
        worker: two parcels, two round trips, two replies per tick, where one would do."""
        if self.config.validator_gather_us <= 0:
            return 0.0
        held = self._tick_operators
        if not validators.holding:  # the last hold ended (its tick is gone): a new tick starts here
            held.clear()
        held.add(operator)
        if len(held) < self.metrics.submitters:
            return self.config.validator_gather_us / 1e6
        held.clear()
        return 0.0

    def _verify(self, entry: QueuedSubmit, verdicts: asyncio.Future[np.ndarray] | None) -> None:
        """Wait for ``entry``'s verdicts (None: an unsigned Submit, nothing to verify) off the loop."""
        loop = self.loop
        assert loop is not None
        future: asyncio.Future[Any]
        if verdicts is None:
            future = loop.create_future()
            future.set_result(None)
        else:
            future = verdicts
        self.verifying.append((entry, future))
        future.add_done_callback(self._verified)

    def after_verified(self, action: Callable[[], None]) -> None:
        """Run ``action`` (an admin request) once every Submit received before it has its verdicts
        and is queued: at once if none is being verified, else in arrival order behind them."""
        if not self.verifying:
            action()
            return
        assert self.loop is not None
        done: asyncio.Future[np.ndarray | None] = self.loop.create_future()
        done.set_result(None)
        self.verifying.append((action, done))
        self.metrics.counters["admin_waited_for_verdicts"] += 1

    def _verified(self, _: object = None) -> None:
        """Move the Submits whose verdicts are in, from the head of ``verifying``, to the queue
        (and run the admin requests that waited for them, in order)."""
        verifying = self.verifying
        while verifying and verifying[0][1].done():
            entry, future = verifying.popleft()
            if future.cancelled():
                continue
            if not isinstance(entry, QueuedSubmit):
                entry()  # an admin request: it drains the queue (everything before it) first
                continue  # (a fatal fault in it cleared ``verifying``: the loop ends)
            exc = future.exception()
            if isinstance(exc, ValidatorsUnavailable):
                self.metrics.counters["validators_unavailable_submits"] += 1
                self._answer_now(entry, _OVERLOADED * entry.transfers, ResultCode.OVERLOADED)
                continue
            if exc is not None:
                self._on_fatal(ErrorCode.ENGINE_FAILED, f"the validators failed ({type(exc).__name__}: {exc})")
                return
            verdicts = future.result()
            if verdicts is not None:
                bad = verdicts != ResultCode.OK
                n_bad = int(np.count_nonzero(bad))
                if n_bad:
                    self.metrics.counters["bad_signatures"] += n_bad
                    if n_bad == entry.transfers:
                        self._answer_now(entry, verdicts.tobytes(), ResultCode.BAD_SIGNATURE)
                        continue
                    good = np.frombuffer(entry.records, dtype=TRANSFER_DTYPE)[~bad]
                    self.metrics.dequeued(entry.conn.load, entry.transfers, entry.cost)
                    self.metrics.codes[ResultCode.BAD_SIGNATURE] += n_bad
                    entry.records = good.tobytes()
                    entry.transfers = entry.cost = len(good)
                    entry.verdicts = verdicts
                    self.metrics.enqueued(entry.conn.load, entry.transfers, entry.cost)
            self.queue.append(entry)
        if not self.queue:
            return
        if not self._hold_for_verdicts():
            self._schedule_flush()
        elif self._flush_handle is None:  # held at most VERDICT_HOLD_MAX_S (a hung worker's Submit)
            assert self.loop is not None
            self._flush_handle = self.loop.call_later(self.hold_max_s, self._flush)

    def _hold_for_verdicts(self) -> bool:
        """Whether what is queued should wait for the verdicts of the next Submit being verified:
        one admitted within ``VERDICT_HOLD_NS`` of the oldest queued one (the other operators'
        Submits of the same generator tick, whose verdicts may come back from another worker a
        little later). Then the tick is one ledger batch, not one per reply (each batch costs the
        sequencer ~100-200 us whatever its size). Never past ``max_batch``; the wait ends with that
        Submit's verdicts (``_verified`` runs again) or after ``hold_max_s``, whichever is
        first: a Submit stuck on a hung worker (killed after ``chunk_timeout_s``) does not hold the
        Submits verified before it."""
        verifying = self.verifying
        if not verifying or self.metrics.queued_records >= self.config.max_batch:
            return False
        head = verifying[0][0]
        return type(head) is QueuedSubmit and head.enqueued_ns - self.queue[0].enqueued_ns <= VERDICT_HOLD_NS

    def _answer_now(self, entry: QueuedSubmit, codes: bytes, code: ResultCode) -> None:
        """Answer a verified (or unverifiable) Submit that has nothing for the ledger."""
        conn = entry.conn
        self.metrics.dequeued(conn.load, entry.transfers, entry.cost)
        self.metrics.codes[code] += entry.transfers
        if conn.closing:
            return
        conn.send(Results(entry.seq, codes, time.time_ns()))
        if conn.close_when_idle and conn.load.pending == 0:
            conn.close()

    async def settle(self) -> None:
        """Wait until every Submit being verified is in the queue (or answered)."""
        while self.verifying:
            await asyncio.wait([f for _, f in self.verifying])
            self._verified()

    def fair_share(self) -> int:
        """Most transfers one operator (all its connections) may have queued: an equal share of the
        queue among the operators connected, at least a full batch."""
        return max(self.config.queue_limit // max(self.metrics.submitters, 1), self.config.max_batch)

    # ---- batching --------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_soon:
            return
        loop = self.loop
        assert loop is not None
        if self.metrics.queued_records >= self.config.max_batch or self.wait_s == 0:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = loop.call_soon(self._flush)
            self._flush_soon = True
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self.wait_s, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._flush_soon = False
        self._run_batch()
        if self.queue:
            assert self.loop is not None
            self._flush_handle = self.loop.call_soon(self._flush)
            self._flush_soon = True

    def cancel(self) -> None:
        """Cancel a scheduled flush (at shutdown, before the final ``drain``)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def drain(self) -> None:
        """Apply and answer everything queued now (before admin requests and at shutdown): with a
        pipelined group commit, the Results held for an fsync are sent once one (on this thread)
        has made them durable."""
        while self.queue:
            self._run_batch()
        if self.held:
            self._sync_now()

    def _sync_now(self) -> None:
        """fsync on this thread (after the one running, if any); its ``on_durable`` releases the
        held Results."""
        if self.journal is None:
            return
        try:
            self.journal.sync()
        except OSError as exc:
            self._on_journal_failed(exc)

    def release(self, durable_seq: int) -> None:
        """The journal is durable through ``durable_seq``: send the Results held for its batches."""
        held = self.held
        while held and held[0][0] <= durable_seq:
            _, out, n = held.popleft()
            self.held_transfers -= n
            self._send(out)

    def clear(self) -> None:
        """Drop everything queued, unanswered (a fatal fault)."""
        loads = [e.conn.load for e in self.queue] + [e.conn.load for e, _ in self.verifying if type(e) is QueuedSubmit]
        for _, future in self.verifying:
            future.cancel()
        self.verifying.clear()
        self.queue.clear()
        self.held.clear()  # never acknowledged: their fsync failed or never ran
        self.held_transfers = 0
        self.metrics.queue_cleared(loads)

    def _send(self, out: dict[Connection, list[bytes]]) -> None:
        """Write a batch's Results frames, one write per connection."""
        for conn, frames in out.items():
            if conn.closing:
                continue
            conn.write(b"".join(frames))
            if conn.close_when_idle and conn.load.pending == 0:
                conn.close()

    def _run_batch(self) -> None:
        """One engine batch from the head of the queue: apply, split, reply."""
        queue = self.queue
        limit = self.config.max_batch
        entries: list[QueuedSubmit] = []
        n = 0
        dequeued = self.metrics.dequeued
        while queue and n + queue[0].transfers <= limit:
            entry = queue.popleft()
            entries.append(entry)
            n += entry.transfers
            dequeued(entry.conn.load, entry.transfers, entry.cost)
        if not entries:
            return
        # Joining the raw blobs is one memcpy; np.concatenate of structured arrays costs ~10 µs per
        # part in dtype promotion. A bytearray keeps the batch writable like any other array.
        batch = np.frombuffer(bytearray().join([e.records for e in entries]), dtype=TRANSFER_DTYPE)
        t0 = time.perf_counter_ns()
        clock = self.ledger.clock.payments if self.ledger is not None else 0
        if self.journal is not None and self.ledger is not None:
            note_journal_seqs(self.ledger.hooks, self.journal.seq + 1)  # the entry append_batch writes
        if self.snapshotter is not None:
            self.snapshotter.before_batch(batch)  # a copy-on-update snapshot saves what the batch may change
        try:
            codes = self.ledger.apply(batch) if self.ledger is not None else np.zeros(n, dtype=CODE_DTYPE)
        except Exception as exc:  # a bug, not a hook error (the ledger turns those into HOOK_ERROR)
            self._on_fatal(ErrorCode.ENGINE_FAILED, f"the engine failed applying a batch ({type(exc).__name__}: {exc})")
            return
        entry_seq = 0
        if self.journal is not None:
            # Durable (as the fsync policy says) before any of its Results is written: now, or
            # (pipelined: ``defers_acks``) when an fsync covering ``entry_seq`` returns.
            try:
                if self.journal.defers_acks:
                    entry_seq = self.journal.append_batch(batch, codes, clock, wait=False)
                else:
                    self.journal.append_batch(batch, codes, clock)
            except OSError as exc:
                self._on_journal_failed(exc)
                return
        commit_ns = time.time_ns()
        t1 = time.perf_counter_ns()
        self.metrics.batch_done(n, codes, t1 - t0, t1 - entries[0].enqueued_ns)

        blob = codes.tobytes()
        out: dict[Connection, list[bytes]] = {}
        off = 0
        encode = self._encoder.encode
        pack = HEADER.pack
        for entry in entries:
            conn = entry.conn
            k = entry.transfers
            if conn.closing:
                off += k
                continue
            if entry.verdicts is None:
                part = blob[off : off + k]
            else:
                full = entry.verdicts.copy()
                full[full == ResultCode.OK] = codes[off : off + k]
                part = full.tobytes()
            body = encode(Results(entry.seq, part, commit_ns))
            off += k
            frames = out.get(conn)
            if frames is None:
                out[conn] = [pack(len(body)), body]
            else:
                frames += (pack(len(body)), body)
        if self.journal is not None and entry_seq > self.journal.durable_seq:
            self.held.append((entry_seq, out, n))
            self.held_transfers += n
            if self.held_transfers > self.config.queue_limit:
                # Bounded like the queue: a disk slower than the offered load stops the loop (and
                # so, through the sockets, the clients) rather than holding Results without end.
                self._sync_now()
        else:
            self._send(out)
        if self.ledger is not None:
            # The replies are written: observers run off the latency path, after every batch (so
            # that replaying the journal batch by batch rebuilds the same hook state).
            self.ledger.run_deferred()
            if self.snapshotter is not None:
                self.snapshotter.maybe_start()  # between batches: the state is that after journal.seq
