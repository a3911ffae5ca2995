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

    A batch is cut into chunks of at most ``chunk_transfers`` (one per worker, but none below
    ``min_split`` transfers unless the batch is smaller), put on one queue; one feeder thread per
    worker takes the chunks at the head of the queue, up to ``chunk_transfers`` transfers together
    (a *parcel*: several Submits' chunks in one message), sends them down the worker's pipe and
    waits for their verdicts. Measured (issue 19, shared 2-core machine): a round trip costs the
    server's process ~190 us of CPU (pipe, thread wake-ups, the GIL), and at the signed profile's
    rates Submits carry tens of transfers, so one chunk per Submit half-split across two workers
    spent about a third of a verification's cost again on the parent's side and three scheduler
    wake-ups per ten transfers; parcels and ``min_split`` pay that once per parcel.

    Pipes, not shared memory: a 512-transfer parcel is 57 KB (copying it is microseconds) against
    ~30 ms of verification, and a pipe's end-of-file is how a dead worker is noticed, with nothing
    to clean up after it. Feeder threads block in ``recv`` with the GIL released; verdicts reach
    asyncio through ``concurrent.futures.Future`` (``asyncio.wrap_future``).

A worker that dies (crash, OOM kill, SIGKILL)
    Its feeder sees end-of-file, puts the chunks it had in flight back at the head of the queue
    (another worker verifies them) and starts a replacement (at most ``max_restarts`` in the pool's
    life). A worker that does not answer a chunk within ``chunk_timeout_s`` (hung, or stopped) is
    killed and treated the same way. A chunk is delivered exactly once: only the feeder holding it
    delivers it, and it is requeued only when no verdict came back. A batch resolves only when
    every chunk has a verdict: never applied unverified. If a chunk has killed ``max_attempts``
    workers, or no worker is left, its batch fails with ``ValidatorsUnavailable``: the caller must
    refuse those transfers (they were not verified), never apply them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import math
import threading
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
    open_registry,
    pair_count,
    process_context,
    process_cpu_s,
    verify_records,
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
#: Parcels in flight per worker: one being verified, one waiting in its pipe (``LocalValidators._feed``).
PIPELINE_PARCELS = 2


class InlineValidators(Validators):
    """``--validators 0``: verify on the caller's own thread (blocks an event loop while it runs)."""

    def __init__(self, registry: KeyRegistry) -> None:
        self.workers = 0
        self._keys = registry.public_keys()
        self._stats = ValidatorStats(kind="inline", workers=0)

    def verify_now(self, records: bytes, signatures: bytes) -> np.ndarray:
        """The verdicts, computed here and now."""
        codes = verify_records(records, signatures, self._keys)
        self._stats.batches += 1
        self._stats.transfers += len(codes)
        return codes

    async def start(self) -> None:
        return None

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        return self.verify_now(records, signatures)

    def verify_future(self, records: bytes, signatures: bytes) -> asyncio.Future[np.ndarray]:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        future.set_result(self.verify_now(records, signatures))
        return future

    async def close(self) -> None:
        return None

    def stats(self) -> ValidatorStats:
        return msgspec.structs.replace(self._stats)


# ---- local worker processes ------------------------------------------------------------------------


def _worker_main(conn: Connection, path: str, seed: int, accounts: int) -> None:
    """A validator process: map the registry, then verify each chunk it is sent until end-of-file."""
    try:
        keys = open_registry(path, seed=seed, accounts=accounts).public_keys()
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
            codes = verify_records(
                bytes(view[: n * _RECORD_BYTES]), bytes(view[n * _RECORD_BYTES :]), keys
            )  # bytes: PyNaCl takes bytes only
        except Exception as exc:  # a bug: report it against this chunk rather than die silently
            conn.send_bytes(_FAILED + f"{type(exc).__name__}: {exc}".encode())
            continue
        conn.send_bytes(_VERDICTS + codes.tobytes())


class _Batch:
    """A batch's verdicts as its chunks come back, and where they go: an asyncio future of the loop
    that asked (resolved on that loop, one wake-up per parcel) or a ``concurrent.futures.Future``."""

    __slots__ = ("codes", "done", "future", "loop", "remaining")

    def __init__(
        self,
        n: int,
        chunks: int,
        future: asyncio.Future[np.ndarray] | concurrent.futures.Future[np.ndarray],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.codes = np.empty(n, dtype=np.uint8)
        self.remaining = chunks
        self.done = False
        self.future = future
        self.loop = loop


def _resolve(batches: list[_Batch], error: Exception | None = None) -> None:
    """Hand finished batches their verdicts (or ``error``), from a feeder thread: a concurrent future
    directly, asyncio futures on their loop, with one wake-up per loop for all of them."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Batch]] = {}
    for b in batches:
        if b.loop is None:
            fut = b.future
            assert isinstance(fut, concurrent.futures.Future)
            if error is None:
                fut.set_result(b.codes)
            else:
                fut.set_exception(error)
        else:
            by_loop.setdefault(b.loop, []).append(b)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for these any more
            loop.call_soon_threadsafe(_set_on_loop, mine, error)


def _set_on_loop(batches: list[_Batch], error: Exception | None) -> None:
    for b in batches:
        if not b.future.done():  # cancelled by its caller meanwhile
            if error is None:
                b.future.set_result(b.codes)
            else:
                b.future.set_exception(error)


class _Chunk:
    __slots__ = ("attempts", "batch", "n", "offset", "records", "signatures")

    def __init__(self, batch: _Batch, offset: int, n: int, records: bytes, signatures: bytes) -> None:
        self.batch = batch
        self.offset = offset
        self.n = n
        self.records = records
        self.signatures = signatures
        self.attempts = 0


class _Worker:
    """One validator process and the parent's end of its pipe."""

    def __init__(self, pool: LocalValidators) -> None:
        ctx = pool._ctx
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child, str(pool.registry_path), pool.seed, pool.accounts),
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


class LocalValidators(Validators):
    """N local validator processes sharing the key registry through the page cache (module docstring)."""

    def __init__(
        self,
        registry: KeyRegistry,
        workers: int,
        *,
        chunk_transfers: int = 128,
        min_split: int = 32,
        max_attempts: int = 3,
        max_restarts: int | None = None,
        chunk_timeout_s: float = 30.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a local validator pool needs at least one worker, got {workers} (0 = InlineValidators)")
        if chunk_transfers < 1 or max_attempts < 1:
            raise ValueError("chunk_transfers and max_attempts must be >= 1")
        self.workers = workers
        self.registry_path = Path(registry.path)
        self.seed = registry.seed
        self.accounts = registry.accounts
        self.chunk_transfers = chunk_transfers
        self.min_split = max(1, min_split)
        self.max_attempts = max_attempts
        self.chunk_timeout_s = chunk_timeout_s
        self.max_restarts = 4 * workers if max_restarts is None else max_restarts
        self._ctx = process_context()
        self._cond = threading.Condition()
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._queued = 0  # transfers in ``_queue``
        self._live: dict[int, _Worker] = {}  # slot -> its current worker
        self._starting = 0  # replacements being started
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._unavailable: str | None = None
        self._stats = ValidatorStats(kind="local", workers=workers)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start_now(self) -> None:
        """Start every worker and its feeder thread; blocks until all are ready."""
        started: list[_Worker] = []
        try:
            started.extend(_Worker(self) for _ in range(self.workers))
        except ValidatorsUnavailable:
            for w in started:
                w.stop()
            raise
        for slot, worker in enumerate(started):
            self._live[slot] = worker
            t = threading.Thread(target=self._feed, args=(slot,), name=f"cbdc-validator-feeder-{slot}", daemon=True)
            self._threads.append(t)
            t.start()

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.start_now)

    def close_now(self) -> None:
        """Stop feeding, let in-flight chunks finish, stop the workers; unfinished batches fail."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        for w in list(self._live.values()):
            w.stop()
        self._live.clear()
        self._fail_queued("the validator pool was closed")

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close_now)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (tests kill them)."""
        with self._cond:
            return [w.pid for w in self._live.values()]

    def stats(self) -> ValidatorStats:
        with self._cond:
            pids = [w.pid for w in self._live.values()]
            stats = msgspec.structs.replace(self._stats)
        stats.cpu_s = sum(process_cpu_s(pid) for pid in pids)
        return stats

    # ---- verifying -----------------------------------------------------------------------------------

    def submit(self, records: bytes, signatures: bytes) -> concurrent.futures.Future[np.ndarray]:
        """Queue a batch; the future gives its verdicts (or raises ValidatorsUnavailable)."""
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        self._enqueue(records, signatures, future, None)
        return future

    def verify_future(self, records: bytes, signatures: bytes) -> asyncio.Future[np.ndarray]:
        """Queue a batch; a future of the running loop gives its verdicts, set on that loop (no Task,
        no thread-safe future: the feeder wakes the loop once per parcel, not once per batch)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._enqueue(records, signatures, future, loop)
        return future

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        return await self.verify_future(records, signatures)

    def verify_now(self, records: bytes, signatures: bytes) -> np.ndarray:
        """The verdicts, blocking until they are in (for callers without an event loop)."""
        return self.submit(records, signatures).result()

    def _enqueue(
        self,
        records: bytes,
        signatures: bytes,
        future: asyncio.Future[np.ndarray] | concurrent.futures.Future[np.ndarray],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        n = pair_count(records, signatures)
        per = max(1, min(self.chunk_transfers, max(self.min_split, math.ceil(n / self.workers))))
        offsets = range(0, n, per)
        batch = _Batch(n, len(offsets), future, loop)
        if n == 0:
            with self._cond:
                self._stats.batches += 1
            future.set_result(batch.codes)
            return
        chunks = [
            _Chunk(
                batch,
                o,
                min(per, n - o),
                records[o * _RECORD_BYTES : (o + per) * _RECORD_BYTES],
                signatures[o * SIGNATURE_BYTES : (o + per) * SIGNATURE_BYTES],
            )
            for o in offsets
        ]
        with self._cond:
            if self._unavailable is not None or self._closing or not self._threads:
                why = self._unavailable or ("the validator pool is closed" if self._closing else "call start() first")
                future.set_exception(ValidatorsUnavailable(why))
                return
            self._stats.batches += 1
            self._stats.transfers += n
            self._stats.chunks += len(chunks)
            self._queue.extend(chunks)
            self._queued += n
            self._cond.notify(len(chunks))

    # ---- feeder threads ------------------------------------------------------------------------------

    def _take(self, wait: bool) -> list[_Chunk] | None:
        """A parcel: chunks from the head of the queue, at most its fair share (the queued transfers
        over the live workers, at least ``min_split``, at most ``chunk_transfers``) and at least one
        chunk. ``wait``: block until there is one; else [] when the queue is empty. None: closing."""
        with self._cond:
            while wait and not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            queue = self._queue
            if not queue:
                return []
            share = math.ceil(self._queued / max(1, len(self._live)))
            room = min(self.chunk_transfers, max(self.min_split, share))
            parcel = [queue.popleft()]
            room -= parcel[0].n
            while queue and queue[0].n <= room:
                room -= queue[0].n
                parcel.append(queue.popleft())
            self._queued -= sum(c.n for c in parcel)
            self._stats.parcels += 1
            return parcel

    def _feed(self, slot: int) -> None:
        """One worker's feeder: parcels down the pipe, verdicts back, until closed or out of workers.

        Up to ``PIPELINE_PARCELS`` parcels are in flight: while the worker verifies one, the next
        waits in its pipe, so it never idles for the round trip (the verdicts' trip back, this
        thread's wake-up and its wait for the GIL, the next parcel's trip out) while work is
        queued. The feeder blocks on the queue only with nothing in flight, and on the pipe
        otherwise; replies come back in the order the parcels went.
        """
        worker: _Worker | None = self._live[slot]
        inflight: collections.deque[tuple[list[_Chunk], int]] = collections.deque()
        while worker is not None:
            closing = False
            while len(inflight) < PIPELINE_PARCELS:
                taken = self._take(wait=not inflight)
                if taken is None:
                    closing = True
                    break
                parcel = [c for c in taken if not c.batch.done]  # a failed batch's chunks are dropped
                if not parcel:
                    if inflight:
                        break
                    continue
                n = sum(c.n for c in parcel)
                inflight.append((parcel, n))
                try:
                    worker.conn.send_bytes(b"".join([c.records for c in parcel] + [c.signatures for c in parcel]))
                except OSError:
                    break  # dead: noticed below, on its pipe
            if not inflight:
                if closing:
                    return
                continue
            parcel, n = inflight[0]
            try:
                if not worker.conn.poll(self.chunk_timeout_s):
                    raise TimeoutError
                reply = worker.conn.recv_bytes()
            except (EOFError, OSError):  # TimeoutError is an OSError: a hung worker is treated as dead
                worker = self._replace(slot, worker, [c for p, _ in inflight for c in p])
                inflight.clear()
                continue
            inflight.popleft()
            if reply[:1] == _VERDICTS and len(reply) == 1 + n:
                codes = np.frombuffer(reply, dtype=np.uint8, offset=1)
                at = 0
                finished: list[_Batch] = []
                for c in parcel:
                    if self._deliver(c, codes[at : at + c.n]):
                        finished.append(c.batch)
                    at += c.n
                _resolve(finished)
            else:
                why = f"a validator failed on a chunk: {reply[1:].decode(errors='replace')}"
                for c in parcel:
                    self._fail_batch(c.batch, why)

    def _deliver(self, chunk: _Chunk, codes: np.ndarray) -> bool:
        """Store a chunk's verdicts; True if that completed its batch (which the caller resolves)."""
        batch = chunk.batch
        with self._cond:
            if batch.done:
                return False
            batch.codes[chunk.offset : chunk.offset + chunk.n] = codes
            batch.remaining -= 1
            if batch.remaining:
                return False
            batch.done = True
        return True

    def _replace(self, slot: int, dead: _Worker, parcel: list[_Chunk]) -> _Worker | None:
        """``dead`` died holding ``parcel``: requeue its chunks (or fail their batches), start a replacement."""
        dead.process.kill()  # dead already, or hung past chunk_timeout_s: it must never answer later
        dead.stop(timeout_s=1.0)
        log.warning("validator pid %d died (exit code %s); re-verifying its chunks", dead.pid, dead.process.exitcode)
        for chunk in parcel:
            chunk.attempts += 1
        retry = [c for c in parcel if c.attempts < self.max_attempts]
        poisoned = [c for c in parcel if c.attempts >= self.max_attempts]
        with self._cond:
            del self._live[slot]
            self._stats.worker_deaths += 1
            self._queue.extendleft(reversed(retry))  # back at the head, in their order
            self._queued += sum(c.n for c in retry)
            self._stats.requeued_chunks += len(retry)
            self._cond.notify(len(retry))
            may_restart = self._stats.restarts < self.max_restarts and not self._closing
            if may_restart:
                self._stats.restarts += 1
                self._starting += 1
        for chunk in poisoned:
            self._fail_batch(
                chunk.batch, f"a chunk of this batch was in flight on {chunk.attempts} validator workers that all died"
            )
        replacement: _Worker | None = None
        if may_restart:
            try:
                replacement = _Worker(self)
            except ValidatorsUnavailable as exc:
                log.error("could not replace validator worker: %s", exc)
        with self._cond:
            self._starting -= may_restart
            if replacement is not None:
                self._live[slot] = replacement
                return replacement
            if self._live or self._starting:
                return None
            self._unavailable = (
                f"every validator worker died and the restart budget ({self.max_restarts}) is spent; "
                "restart the server (its signed transfers since are refused, not applied)"
            )
        self._fail_queued(self._unavailable)
        return None

    def _fail_batch(self, batch: _Batch, why: str) -> None:
        with self._cond:
            if batch.done:
                return
            batch.done = True
            self._stats.failed_batches += 1
        _resolve([batch], ValidatorsUnavailable(why))

    def _fail_queued(self, why: str) -> None:
        with self._cond:
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


def make_validators(spec: str | int, registry: KeyRegistry, **options: Any) -> Validators:
    """The tier that ``--validators spec`` names (``options`` go to its constructor); not started."""
    kind, arg = parse_validators(spec)
    if kind == "ray":
        from engine.validators_ray import RayValidators  # Ray is an optional extra

        return RayValidators(registry, address=str(arg), **options)
    assert isinstance(arg, int)
    return InlineValidators(registry) if arg == 0 else LocalValidators(registry, arg, **options)


async def verify_all(validators: Validators, batches: Sequence[tuple[bytes, bytes]]) -> list[np.ndarray]:
    """Verdicts for several batches submitted together (they overlap on the workers)."""
    return list(await asyncio.gather(*(validators.verify(r, s) for r, s in batches)))
