"""The validation tier: signature verdicts for a batch, from N validator processes (or inline).

The sequencer hands a batch (records + signatures) to the tier and awaits its verdicts (one result
code per transfer: OK or BAD_SIGNATURE) before the ledger applies the batch in its exact order.
It never runs a verification on its own thread, except with ``--validators 0`` (``InlineValidators``,
the naive case, measured as such).

Local workers (``LocalValidators``)
    N processes (``forkserver`` start, ``spawn`` where unavailable: never a fork of the server's
    threaded, event-looped process), each with the whole key registry mapped read-only. Every
    worker handles any payer: the registry's pages are shared through the page cache, so a
    "partition" would save no memory on one machine, while partitioning by payer range would
    split every batch by payer and leave the worker of the hottest range (the workload is
    Zipf-skewed) the bottleneck. With any-payer workers, load balances itself and a dead worker's
    chunk can go to any other. (The Ray tier, across machines, does partition: ``validators_ray``.)

    A batch is cut evenly into chunks of at most ``chunk_transfers`` (one per worker, but none
    below ``min_split`` transfers: a smaller batch stays whole, ``chunk_size``), put on one queue;
    the chunks at its head
    go to a worker together (a *parcel*: several Submits' chunks in one message), at most a fair
    share of what is queued (queued transfers over live workers, at least ``min_parcel``, at most
    ``chunk_transfers``), so that two idle workers split a burst above ``min_parcel`` instead of
    one taking it all.
    Each worker has up to ``PIPELINE_PARCELS`` (2) parcels in flight: while it verifies one, the
    next waits in its pipe, so it never idles for a round trip while work is queued.

    Everything on the parent's side runs on the server's event loop, in its one thread: parcels
    are written to the pipes once per loop iteration after batches arrive (the Submits read in one
    iteration share parcels), and as verdicts free a slot; the pipes are read
    with ``loop.add_reader``; a batch's loop future gets its verdicts directly. The first version
    had one feeder thread per worker (blocking ``recv``, verdicts through ``concurrent.futures``
    and ``call_soon_threadsafe``) and one parcel in flight: measured end to end (issue 19, shared
    2-core machine), each round trip cost the server ~200-400 us of CPU in thread wake-ups and GIL
    hand-offs, the workers idled between parcels while their feeder waited for the GIL, and a
    512-transfer parcel (~30 ms of verification) alone exceeded a 20 ms p99. Hence the loop, two
    parcels in flight, fair shares and the default cap of 128 transfers (~8 ms).

    Pipes, not shared memory: a 128-transfer parcel is 14 KB (copying it is microseconds) against
    ~8 ms of verification, and a pipe's end-of-file is how a dead worker is noticed, with nothing
    to clean up after it. Two parcels of at most ``MAX_PARCEL_TRANSFERS`` fit in a socket buffer,
    so the loop's (blocking) send never waits on a worker, and a reply (one write of 1 + n bytes)
    is whole once its pipe is readable. A pool is used from the loop it was started on.

Parcels (``min_parcel``, ``ServerConfig.validator_min_parcel``, 128 by default)
    Below saturation every round trip is paid in full: a pipe write, a worker woken, its reply, the
    server woken, and the verdicts of each reply applied as a ledger batch of their own. Up to
    session 5 of issue 19 a parcel was at least a fair share (``min_parcel`` = ``min_split`` = 32):
    a generator tick's two Submits of 40 (16,000/s) went to both workers, two round trips and two
    ledger batches per tick. Filled up to 128 (~8 ms of verification) they travel together: one
    round trip, one reply, one ledger batch per tick up to ~25,000/s, the other core left to the
    server and the generator, at the price of ~2.5 ms more verification latency per payment at
    16,000/s (the workers alternate ticks). In-process (``bench_validators.py --only tier-2-paced
    --min-parcel 32`` against 128, issue 19's sixth session, shared machine, the one alternated pair
    in which the tier kept pace): the workers' CPU per transfer above the verification's own 14.0
    against 2.9 us, the feeder's 7.0 against 5.9 us (33 against 80 transfers per parcel).

Ticks (``verify_future``'s ``hold_s``, ``ServerConfig.validator_gather_us``, 0 by default: off)
    Filling parcels up to ``min_parcel`` joins only the Submits queued when the loop dispatches:
    a generator writes its operators' Submits back to back, but the second often arrives after the
    loop has sent the first to a worker, and about half the ticks still left in two parcels (issue
    19, seventh session). So the server's batcher holds a signed Submit while other connected
    operators have not sent theirs since the hold began, and the pool sends nothing (the loop's
    dispatch included) until a Submit comes without a hold, a parcel's worth is queued, or
    ``hold_s`` has passed since the first held one. The wait is bounded (an idle operator costs each
    tick at most ``hold_s`` more latency) and never drops anything: a held chunk is queued like any
    other, and a dead worker's chunks requeued meanwhile go out when the hold ends. Off by default
    since the quiet A/B (issue 19, eighth session: ``signed_tiers.py --validator-policy normal,batch
    --validator-gather-us 0,1000``, twice, with two single-axis searches): the searched maximum with
    a 1 ms hold was 8,800-16,833/s in 7 searches against 15,992-19,800/s without it in 6.

Priority (``policy``, ``ServerConfig.validator_policy``: "normal" by default, "batch" or "idle"; ``nice``, 0)
    The workers are the only CPU-bound processes of a signed run; the sequencer's loop and the
    generator wake for bursts of a few hundred microseconds per 5 ms tick. Profiled (py-spy, issue
    19, seventh session, shared machine, 6,000/s): 29% of the server's samples sat inside the pipe
    write of ``_dispatch``: the write wakes a worker, which (having slept, so owed time) preempts the
    server on its own core and verifies for a whole slice while the server's loop waits with replies
    to send. A ``SCHED_BATCH`` task never preempts on wake-up (its preemption is driven by the tick,
    sched(7)); it still gets its full share of an otherwise idle core, so the workers lose nothing
    but the right to cut in. Alternated pairs at 6,000/s (load average 7, so no run met the SLO;
    shared machine): p99 97/106/426 ms normal against 57/65/121 ms batch, CPU per payment without
    the machine's unattributed CPU 118 against 113 us (validators 78 against 73). Quiet, that did
    not hold (eighth session, the searches above): normal 15,300-18,000/s, batch 8,800-19,800/s
    (without the hold: normal 16,833 / 18,000, batch 15,992 / 16,592 / 19,800): no difference
    beyond the searches' spread, so the default went back to "normal"; "batch" stays an option.
    ``nice`` lowers the workers' weight instead; measurements were inconclusive (fifth session:
    lower CPU per payment at nice 10 in every alternated pair under full load, worse tails when
    other processes left idle cores), and on a machine shared with other CPU-bound work niced
    workers get less than their share. Hence 0. "idle" (``SCHED_IDLE``) goes further: any other
    task preempts a verifying worker at once, and the workers get only what nothing else wants.
    Quiet, seven alternated searches (issue 19, eleventh session): idle 18,338-28,375/s, median
    0.71 of two cores' verification rate, against normal 17,692-28,625/s, median 0.67, idle ahead
    in 4 of 7: within the host's spread, and an idle worker starves beside any other busy process,
    so "normal" stays the default. Quiet A/B commands: ``benchmarks/signed_tiers.py
    --validator-policy normal,batch,idle`` and ``--validator-nice 0,10``.

A worker that dies (crash, OOM kill, SIGKILL)
    Its pipe reads end-of-file: the chunks it had in flight go back at the head of the queue
    (another worker verifies them) and a replacement starts in an executor thread (at most
    ``max_restarts`` in the pool's life). A worker that gives no verdicts within ``chunk_timeout_s``
    of its oldest parcel's turn (hung, or stopped) is killed and treated the same way. A chunk is
    delivered exactly once: only a reply from the worker holding it delivers it, it is requeued
    only when that worker is gone (killed first, so it can never answer late), and a batch's
    verdicts are stored only until it is done. A batch resolves only when every chunk has a
    verdict: never applied unverified. If a chunk has killed ``max_attempts`` workers, or no
    worker is left, its batch fails with ``ValidatorsUnavailable``: the caller must refuse those
    transfers (they were not verified), never apply them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.records import SIGNATURE_BYTES, TRANSFER_DTYPE
from engine.signing import (
    KeyRegistry,
    RegistryError,
    Verifier,
    open_registry,
    pair_count,
    process_context,
    process_cpu_s,
)
from engine.validator_api import Validators, ValidatorStats, ValidatorsUnavailable

__all__ = [
    "InlineValidators",
    "LocalValidators",
    "ValidatorStats",
    "Validators",
    "ValidatorsUnavailable",
    "make_validators",
    "parse_validators",
    "tier_mismatch",
    "verify_all",
]

log = logging.getLogger(__name__)

_RECORD_BYTES = TRANSFER_DTYPE.itemsize
_PAIR_BYTES = _RECORD_BYTES + SIGNATURE_BYTES
_READY, _VERDICTS, _FAILED = b"R", b"V", b"E"
#: Parcels in flight per worker: one being verified, one waiting in its pipe (``LocalValidators._dispatch``).
PIPELINE_PARCELS = 2
#: Largest parcel: two in a pipe (2 x 512 x 112 bytes) stay below a socket buffer, so sending never blocks.
MAX_PARCEL_TRANSFERS = 512
#: Default ``min_parcel``: a generator tick's Submits (two operators, 5 ms) up to ~25,000/s travel as
#: one parcel, one round trip, their verdicts in one reply (hence one ledger batch), rather than one
#: parcel per worker (module docstring, "Parcel size").
MIN_PARCEL_TRANSFERS = 128
#: Scheduling policies of the local validator processes (module docstring, "Priority").
POLICIES = ("batch", "idle", "normal")
DEFAULT_POLICY = "normal"
#: The ``os`` constant of each policy other than "normal".
_SCHED = {"batch": "SCHED_BATCH", "idle": "SCHED_IDLE"}


class InlineValidators(Validators):
    """``--validators 0``: verify on the caller's own thread (blocks an event loop while it runs)."""

    def __init__(self, registry: KeyRegistry) -> None:
        self.workers = 0
        self._verifier = Verifier(registry.public_keys())
        self._stats = ValidatorStats(kind="inline", workers=0)

    def verify_now(self, records: bytes, signatures: bytes) -> np.ndarray:
        """The verdicts, computed here and now."""
        codes = self._verifier.verify(records, signatures)
        self._stats.batches += 1
        self._stats.transfers += len(codes)
        return codes

    async def start(self) -> None:
        return None

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        return self.verify_now(records, signatures)

    def verify_future(self, records: bytes, signatures: bytes, *, hold_s: float = 0.0) -> asyncio.Future[np.ndarray]:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        future.set_result(self.verify_now(records, signatures))
        return future

    async def close(self) -> None:
        return None

    def stats(self) -> ValidatorStats:
        return msgspec.structs.replace(self._stats)


# ---- local worker processes ------------------------------------------------------------------------


def _worker_main(conn: Connection, path: str, seed: int, accounts: int, nice: int = 0, policy: str = "normal") -> None:
    """A validator process: map the registry, then verify each parcel it is sent until end-of-file.

    A parcel is its records then its signatures (``LocalValidators._dispatch``): both are verified
    in place, as views into the received buffer, and the reply is one write of 1 + n bytes.
    ``nice`` lowers the process's priority, ``policy`` "batch" makes it ``SCHED_BATCH``
    (``LocalValidators``, "Priority").
    """
    if nice > 0:
        os.nice(nice)
    if policy in _SCHED and hasattr(os, _SCHED[policy]):  # Linux; elsewhere the default policy stays
        os.sched_setscheduler(0, getattr(os, _SCHED[policy]), os.sched_param(0))
    try:
        verifier = Verifier(open_registry(path, seed=seed, accounts=accounts).public_keys())
    except RegistryError as exc:
        conn.send_bytes(_FAILED + str(exc).encode())
        return
    conn.send_bytes(_READY)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        n = len(payload) // _PAIR_BYTES
        view = memoryview(payload)
        try:
            codes = verifier.verify(view[: n * _RECORD_BYTES], view[n * _RECORD_BYTES :])
        except Exception as exc:  # a bug: report it against this chunk rather than die silently
            conn.send_bytes(_FAILED + f"{type(exc).__name__}: {exc}".encode())
            continue
        conn.send_bytes(_VERDICTS + codes.tobytes())


def chunk_size(n: int, workers: int, min_split: int, max_chunk: int) -> int:
    """Transfers per chunk of an ``n``-transfer batch: split evenly over at most ``workers`` pieces
    of at least ``min_split`` (more pieces only to keep each at most ``max_chunk``).

    A batch below ``2 x min_split`` stays whole: one round trip, where cutting ``min_split`` off
    the front left a sliver that cost a round trip (a pipe write and a wake-up on each side) of its
    own for a few transfers (a 37-transfer Submit went out as 32 + 5).
    """
    pieces = max(1, min(workers, n // max(min_split, 1)), math.ceil(n / max_chunk))
    return max(1, math.ceil(n / pieces))


class _Batch:
    """A batch's verdicts as its chunks come back, and the loop future that gets them."""

    __slots__ = ("codes", "done", "future", "remaining")

    def __init__(self, n: int, chunks: int, future: asyncio.Future[np.ndarray]) -> None:
        self.codes = np.empty(n, dtype=np.uint8)
        self.remaining = chunks
        self.done = False
        self.future = future


class _Chunk:
    __slots__ = ("attempts", "batch", "n", "offset", "queued_ns", "records", "signatures")

    def __init__(self, batch: _Batch, offset: int, n: int, records: bytes, signatures: bytes, queued_ns: int) -> None:
        self.batch = batch
        self.offset = offset
        self.n = n
        self.records = records
        self.signatures = signatures
        self.attempts = 0
        self.queued_ns = queued_ns  # perf_counter_ns when its batch was queued (ValidatorStats' times)


def tier_ms_bucket(ns: int) -> str:
    """``ValidatorStats.tier_ms``'s bucket of a time in the tier: "0-1", "1-2", "2-4", ... milliseconds."""
    b = (ns // 1_000_000).bit_length()
    return f"{1 << (b - 1)}-{1 << b}" if b else "0-1"


class _Worker:
    """One validator process and the parent's end of its pipe (started by a blocking constructor:
    the pool runs it in an executor thread, never on its loop)."""

    def __init__(self, pool: LocalValidators) -> None:
        ctx = pool._ctx
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child, str(pool.registry_path), pool.seed, pool.accounts, pool.nice, pool.policy),
            name="cbdc-validator",
            daemon=True,
        )
        self.process.start()
        child.close()  # the child's copy is its only one: its death is our end-of-file
        self.conn: Connection = parent
        try:
            hello = parent.recv_bytes()
        except (EOFError, OSError):
            hello = _FAILED + f"exited with code {self.process.exitcode} before it was ready".encode()
        if hello != _READY:
            self.stop()
            raise ValidatorsUnavailable(f"validator worker failed to start: {hello[1:].decode(errors='replace')}")

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.conn.close()  # end-of-file: the worker leaves its loop
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()


class _Slot:
    """A live worker as the loop sees it: its parcels in flight (oldest first: the chunks, their
    transfers, when the parcel was sent), its deadline, and when its last verdicts were read."""

    __slots__ = ("inflight", "replied_ns", "timer", "worker")

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.inflight: collections.deque[tuple[list[_Chunk], int, int]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.replied_ns = 0


class LocalValidators(Validators):
    """N local validator processes sharing the key registry through the page cache (module docstring)."""

    def __init__(
        self,
        registry: KeyRegistry,
        workers: int,
        *,
        chunk_transfers: int = 128,
        min_split: int = 32,
        min_parcel: int = MIN_PARCEL_TRANSFERS,
        max_attempts: int = 3,
        max_restarts: int | None = None,
        chunk_timeout_s: float = 30.0,
        nice: int = 0,
        policy: str = DEFAULT_POLICY,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a local validator pool needs at least one worker, got {workers} (0 = InlineValidators)")
        if not 1 <= chunk_transfers <= MAX_PARCEL_TRANSFERS or max_attempts < 1:
            raise ValueError(f"chunk_transfers must be in 1..{MAX_PARCEL_TRANSFERS} and max_attempts >= 1")
        self.workers = workers
        self.registry_path = Path(registry.path)
        self.seed = registry.seed
        self.accounts = registry.accounts
        self.chunk_transfers = chunk_transfers
        self.min_split = max(1, min_split)
        #: A parcel is filled up to this many transfers before the queue is split across workers
        #: (capped at ``chunk_transfers``; ``_dispatch``).
        self.min_parcel = max(self.min_split, min(min_parcel, chunk_transfers))
        self.max_attempts = max_attempts
        self.chunk_timeout_s = chunk_timeout_s
        self.max_restarts = 4 * workers if max_restarts is None else max_restarts
        if not 0 <= nice <= 19:
            raise ValueError(f"validator nice must be in 0..19, got {nice}")
        self.nice = nice
        if policy not in POLICIES:
            raise ValueError(f"validator policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self._ctx = process_context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._queued = 0  # transfers in ``_queue``
        self._slots: dict[int, _Slot] = {}  # slot number -> its live worker
        self._starting = 0  # replacements being started
        self._closing = False
        self._unavailable: str | None = None
        self._dispatch_soon = False  # a ``_dispatch_queued`` is scheduled on the loop
        self._hold_timer: asyncio.TimerHandle | None = None  # queued batches wait for their tick's others
        self._stats = ValidatorStats(kind="local", workers=workers)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def _start_workers(self) -> list[_Worker]:
        started: list[_Worker] = []
        try:
            started.extend(_Worker(self) for _ in range(self.workers))
        except ValidatorsUnavailable:
            for w in started:
                w.stop()
            raise
        return started

    async def start(self) -> None:
        """Start every worker (in an executor thread: starting blocks) and attach it to this loop."""
        loop = asyncio.get_running_loop()
        started = await loop.run_in_executor(None, self._start_workers)
        self._loop = loop
        for slot, worker in enumerate(started):
            self._attach(slot, worker)

    async def close(self) -> None:
        """Stop the workers; batches not yet verified fail (the server settles its Submits first)."""
        if self._loop is None:
            return
        self._closing = True
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        slots = list(self._slots.values())
        for slot in list(self._slots):
            self._detach(slot)
        for s in slots:
            for parcel, *_ in s.inflight:
                for c in parcel:
                    self._fail_batch(c.batch, "the validator pool was closed")
        self._fail_queued("the validator pool was closed")
        await self._loop.run_in_executor(None, _stop_all, [s.worker for s in slots])

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (tests kill them)."""
        return [s.worker.pid for s in self._slots.values()]

    def stats(self) -> ValidatorStats:
        stats = msgspec.structs.replace(self._stats, tier_ms=dict(self._stats.tier_ms))
        stats.cpu_s = sum(process_cpu_s(pid) for pid in self.worker_pids())
        return stats

    # ---- verifying -----------------------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Queued batches are being held for the rest of their tick (``verify_future(hold=...)``)."""
        return self._hold_timer is not None

    def verify_future(self, records: bytes, signatures: bytes, *, hold_s: float = 0.0) -> asyncio.Future[np.ndarray]:
        """Queue a batch and send what the workers have room for; the future (of the running loop,
        which must be the one the pool started on) gives its verdicts or ValidatorsUnavailable.

        ``hold_s`` > 0: more batches of the same tick are coming (the other operators' Submits,
        ``Batcher``): send nothing yet, unless a parcel's worth (``min_parcel``) is queued, until a
        batch queued without ``hold_s`` or ``hold_s`` after the first held one ("Ticks")."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        n = pair_count(records, signatures)
        if self._unavailable is not None or self._closing or self._loop is None:
            why = self._unavailable or ("the validator pool is closed" if self._closing else "call start() first")
            future.set_exception(ValidatorsUnavailable(why))
            return future
        if loop is not self._loop:
            raise RuntimeError("LocalValidators is used from the event loop it was started on only")
        self._stats.batches += 1
        if n == 0:
            future.set_result(np.empty(0, dtype=np.uint8))
            return future
        per = chunk_size(n, self.workers, self.min_split, self.chunk_transfers)
        offsets = range(0, n, per)
        batch = _Batch(n, len(offsets), future)
        now = time.perf_counter_ns()
        self._queue.extend(
            _Chunk(
                batch,
                o,
                min(per, n - o),
                records[o * _RECORD_BYTES : (o + per) * _RECORD_BYTES],
                signatures[o * SIGNATURE_BYTES : (o + per) * SIGNATURE_BYTES],
                now,
            )
            for o in offsets
        )
        self._queued += n
        self._stats.transfers += n
        self._stats.chunks += len(offsets)
        if hold_s > 0 and self._queued < self.min_parcel:
            if self._hold_timer is None:
                self._hold_timer = loop.call_later(hold_s, self._release)
                self._stats.holds += 1
            return future
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if not self._dispatch_soon:  # once per loop iteration: Submits read together share parcels
            self._dispatch_soon = True
            loop.call_soon(self._dispatch_queued)
        return future

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        return await self.verify_future(records, signatures)

    # ---- the pipes, on the loop ------------------------------------------------------------------------

    def _dispatch_queued(self) -> None:
        self._dispatch_soon = False
        self._dispatch()

    def _release(self) -> None:
        """The hold's time is up: what is queued goes to the workers (the tick's other Submits were late)."""
        self._hold_timer = None
        self._stats.holds_expired += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Send parcels to the workers with room: first one to each idle worker, then a second to
        each with one in flight (``PIPELINE_PARCELS``), so a worker never idles for a round trip while
        work is queued. A parcel is the chunks at the queue's head up to a fair share (the queued
        transfers over the live workers, at least ``min_split``, at most ``chunk_transfers``) and
        at least one chunk."""
        if self._closing or not self._queue or not self._slots or self._hold_timer is not None:
            return
        share = min(self.chunk_transfers, max(self.min_parcel, math.ceil(self._queued / len(self._slots))))
        queue = self._queue
        for depth in range(PIPELINE_PARCELS):
            for slot, s in list(self._slots.items()):
                while queue and len(s.inflight) == depth:
                    parcel = [queue.popleft()]
                    room = share - parcel[0].n
                    while queue and queue[0].n <= room:
                        room -= queue[0].n
                        parcel.append(queue.popleft())
                    n = sum(c.n for c in parcel)
                    self._queued -= n
                    parcel = [c for c in parcel if not c.batch.done]  # a failed batch's chunks are dropped
                    if not parcel:
                        continue
                    self._stats.parcels += 1
                    s.inflight.append((parcel, sum(c.n for c in parcel), time.perf_counter_ns()))
                    if s.timer is None:
                        s.timer = self._arm(slot)
                    try:
                        # At most PIPELINE_PARCELS x MAX_PARCEL_TRANSFERS x 112 bytes in the pipe: below
                        # a socket buffer, so this blocking send never waits on the worker.
                        s.worker.conn.send_bytes(b"".join([c.records for c in parcel] + [c.signatures for c in parcel]))
                    except OSError:
                        self._died(slot, "its pipe is broken")
                        return  # _died dispatched what it requeued
                if not queue:
                    return

    def _arm(self, slot: int) -> asyncio.TimerHandle:
        assert self._loop is not None
        why = f"gave no verdicts in {self.chunk_timeout_s:g} s"
        return self._loop.call_later(self.chunk_timeout_s, self._died, slot, why)

    def _on_readable(self, slot: int) -> None:
        """A worker's pipe is readable: the verdicts of its oldest parcel, or its end-of-file."""
        s = self._slots.get(slot)
        if s is None:
            return
        try:
            # A reply is one write of 1 + n bytes (n <= MAX_PARCEL_TRANSFERS): whole once readable.
            reply = s.worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._died(slot, f"exited (code {s.worker.process.exitcode})")
            return
        if not s.inflight:
            self._died(slot, "answered a parcel it was not sent")
            return
        parcel, n, sent_ns = s.inflight.popleft()
        now = time.perf_counter_ns()
        turn_ns = max(sent_ns, s.replied_ns)
        s.replied_ns = now
        if s.timer is not None:
            s.timer.cancel()
        s.timer = self._arm(slot) if s.inflight else None
        if reply[:1] == _VERDICTS and len(reply) == 1 + n:
            codes = np.frombuffer(reply, dtype=np.uint8, offset=1)
            self._timed(parcel, n, sent_ns, turn_ns, now)
            at = 0
            for c in parcel:
                batch = c.batch
                if not batch.done:
                    batch.codes[c.offset : c.offset + c.n] = codes[at : at + c.n]
                    batch.remaining -= 1
                    if not batch.remaining:
                        batch.done = True
                        if not batch.future.done():  # cancelled by its caller meanwhile
                            batch.future.set_result(batch.codes)
                at += c.n
        else:
            why = f"a validator failed on a chunk: {reply[1:].decode(errors='replace')}"
            for c in parcel:
                self._fail_batch(c.batch, why)
        self._dispatch()

    def _timed(self, parcel: list[_Chunk], n: int, sent_ns: int, turn_ns: int, now: int) -> None:
        """Count where a verified parcel's transfers spent their time (``ValidatorStats``)."""
        stats = self._stats
        stats.timed_transfers += n
        stats.behind_us_sum += n * (turn_ns - sent_ns) / 1e3
        stats.service_us_sum += n * (now - turn_ns) / 1e3
        tier_ms = stats.tier_ms
        for c in parcel:
            stats.wait_us_sum += c.n * (sent_ns - c.queued_ns) / 1e3
            bucket = tier_ms_bucket(now - c.queued_ns)
            tier_ms[bucket] = tier_ms.get(bucket, 0) + c.n

    # ---- workers that die ----------------------------------------------------------------------------

    def _attach(self, slot: int, worker: _Worker) -> None:
        assert self._loop is not None
        self._slots[slot] = _Slot(worker)
        self._loop.add_reader(worker.conn.fileno(), self._on_readable, slot)
        self._dispatch()

    def _detach(self, slot: int) -> _Slot:
        assert self._loop is not None
        s = self._slots.pop(slot)
        self._loop.remove_reader(s.worker.conn.fileno())
        if s.timer is not None:
            s.timer.cancel()
        return s

    def _died(self, slot: int, why: str) -> None:
        """The worker of ``slot`` died or hung (``why``): requeue its parcels' chunks at the head (or
        fail their batches after ``max_attempts``), kill it, start a replacement in an executor."""
        if slot not in self._slots:
            return
        s = self._detach(slot)
        s.worker.process.kill()  # dead already, or hung: it must never answer later
        log.warning("validator pid %d %s; re-verifying its chunks", s.worker.pid, why)
        chunks = [c for parcel, *_ in s.inflight for c in parcel]
        for c in chunks:
            c.attempts += 1
        retry = [c for c in chunks if c.attempts < self.max_attempts and not c.batch.done]
        self._queue.extendleft(reversed(retry))  # back at the head, in their order
        self._queued += sum(c.n for c in retry)
        self._stats.worker_deaths += 1
        self._stats.requeued_chunks += len(retry)
        for c in chunks:
            if c.attempts >= self.max_attempts:
                self._fail_batch(
                    c.batch, f"a chunk of this batch was in flight on {c.attempts} validator workers that all died"
                )
        assert self._loop is not None
        if self._stats.restarts < self.max_restarts and not self._closing:
            self._stats.restarts += 1
            self._starting += 1
            started = self._loop.run_in_executor(None, self._replace, s.worker)
            started.add_done_callback(lambda f: self._replaced(slot, f))
        elif not self._slots and not self._starting:
            self._out_of_workers()
        self._dispatch()

    def _replace(self, dead: _Worker) -> _Worker:
        """In an executor thread: reap the dead worker, start another (ValidatorsUnavailable if it fails)."""
        dead.stop(timeout_s=1.0)
        return _Worker(self)

    def _replaced(self, slot: int, started: asyncio.Future[_Worker]) -> None:
        self._starting -= 1
        exc = started.exception()
        if exc is None and not self._closing:
            self._attach(slot, started.result())
            return
        if exc is None:
            started.result().stop()
        else:
            log.error("could not replace validator worker: %s", exc)
        if not self._slots and not self._starting:
            self._out_of_workers()

    def _out_of_workers(self) -> None:
        self._unavailable = (
            f"every validator worker died and the restart budget ({self.max_restarts}) is spent; "
            "restart the server (its signed transfers since are refused, not applied)"
        )
        self._fail_queued(self._unavailable)

    def _fail_batch(self, batch: _Batch, why: str) -> None:
        if batch.done:
            return
        batch.done = True
        self._stats.failed_batches += 1
        if not batch.future.done():
            batch.future.set_exception(ValidatorsUnavailable(why))

    def _fail_queued(self, why: str) -> None:
        chunks = list(self._queue)
        self._queue.clear()
        self._queued = 0
        for c in chunks:
            self._fail_batch(c.batch, why)


# ---- choosing a tier ----------------------------------------------------------------------------------


def parse_validators(spec: str | int) -> tuple[str, int | str]:
    """``--validators`` as ("local", N) for N >= 0 or ("ray", address) for ``ray:ADDRESS``/``ray:auto``."""
    text = str(spec).strip()
    if text.startswith("ray:"):
        address = text[4:]
        if not address:
            raise ValueError("--validators ray: needs an address: ray:auto or ray:HOST:PORT")
        return "ray", address
    try:
        n = int(text)
    except ValueError:
        raise ValueError(
            f"--validators {spec!r}: give a number of local validator processes (0 = verify on the sequencer's "
            "thread) or ray:ADDRESS / ray:auto"
        ) from None
    if n < 0:
        raise ValueError(f"--validators {n}: must be >= 0")
    return "local", n


def tier_mismatch(spec: str, reported: object) -> str | None:
    """Why a server's tier (its stats' ``validators``: ``ValidatorStats`` as a dict, or None when it
    verifies no signatures) is not the one ``--validators spec`` names; None when it is."""
    kind, arg = parse_validators(spec)
    want = "ray" if kind == "ray" else "inline" if arg == 0 else "local"
    if not isinstance(reported, dict):
        return f"--validators {spec}: the server verifies no signatures (start it with a signed profile)"
    have_kind, have_workers = reported.get("kind"), reported.get("workers")
    if have_kind != want or (kind == "local" and have_workers != arg):
        shown = "0 (inline)" if have_kind == "inline" else f"{have_kind} with {have_workers} workers"
        return (
            f"--validators {spec}: the server's validation tier is {shown}; restart it with "
            f"`serve --validators {spec}` or drop --validators"
        )
    return None


def make_validators(
    spec: str | int,
    registry: KeyRegistry,
    *,
    nice: int = 0,
    min_parcel: int = MIN_PARCEL_TRANSFERS,
    policy: str = DEFAULT_POLICY,
    **options: Any,
) -> Validators:
    """The tier that ``--validators spec`` names (``options`` go to its constructor); not started.

    ``nice``, ``min_parcel`` and ``policy`` apply to local worker processes only (the Ray tier's
    workers are Ray's)."""
    kind, arg = parse_validators(spec)
    if kind == "ray":
        from engine.validators_ray import RayValidators  # Ray is an optional extra

        return RayValidators(registry, address=str(arg), **options)
    assert isinstance(arg, int)
    if arg == 0:
        return InlineValidators(registry)
    return LocalValidators(registry, arg, nice=nice, min_parcel=min_parcel, policy=policy, **options)


async def verify_all(validators: Validators, batches: Sequence[tuple[bytes, bytes]]) -> list[np.ndarray]:
    """Verdicts for several batches submitted together (they overlap on the workers)."""
    return list(await asyncio.gather(*(validators.verify(r, s) for r, s in batches)))
