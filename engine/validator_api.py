"""What every validation tier offers (local processes, inline, Ray): the interface, its counters, its failure.

Kept apart from the tiers so that ``engine.validators`` (which chooses a tier) and
``engine.validators_ray`` (an optional tier) both depend on it and not on each other.
"""

from __future__ import annotations

import abc
import asyncio

import msgspec
import numpy as np


class ValidatorsUnavailable(RuntimeError):
    """The tier could not verify a batch (workers gone, or a chunk killed every worker it met).

    Its transfers were not verified: refuse them, never apply them.
    """


class ValidatorStats(msgspec.Struct, kw_only=True):
    """Counters of one validator tier since it started."""

    kind: str
    workers: int
    batches: int = 0
    transfers: int = 0
    chunks: int = 0
    #: Round trips to a worker; a parcel carries the chunks queued together (local tier only).
    parcels: int = 0
    #: Chunks put back on the queue because the worker holding them died before answering.
    requeued_chunks: int = 0
    worker_deaths: int = 0
    restarts: int = 0
    failed_batches: int = 0
    #: Times queued batches were held for their tick's other Submits (``verify_future``'s ``hold_s``,
    #: local tier), and how many of those holds ran out of time rather than ended by those Submits.
    holds: int = 0
    holds_expired: int = 0
    #: Where a verified transfer's time goes (local tier), summed over transfers, in microseconds:
    #: ``wait``: queued in the server until its parcel is sent; ``behind``: in a worker's pipe behind
    #: that worker's previous parcel; ``service``: from its parcel's turn on the worker (sent, or
    #: the previous parcel answered) until the verdicts are read (the verification, the worker's
    #: and the server's wake-ups). Divide by ``timed_transfers`` for means.
    timed_transfers: int = 0
    wait_us_sum: float = 0.0
    behind_us_sum: float = 0.0
    service_us_sum: float = 0.0
    #: Transfers by their whole time in the tier (wait + behind + service), in milliseconds
    #: ("2-4": at least 2 ms, below 4): the tail that the sums hide.
    tier_ms: dict[str, int] = msgspec.field(default_factory=dict)
    #: User + system CPU seconds of the live worker processes (local tier, Linux /proc; a worker that
    #: died takes its share with it). The inline tier's verification is in the server's own CPU.
    cpu_s: float = 0.0


class Validators(abc.ABC):
    """A validation tier: ``await verify(records, signatures)`` gives one result code per transfer."""

    workers: int

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the workers; raises ValidatorsUnavailable on failure."""

    @abc.abstractmethod
    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        """OK or BAD_SIGNATURE per transfer, in order; ValidatorsUnavailable if not verified."""

    @property
    def holding(self) -> bool:
        """Whether queued batches wait for more of their tick (``verify_future``'s ``hold_s``)."""
        return False

    def verify_future(self, records: bytes, signatures: bytes, *, hold_s: float = 0.0) -> asyncio.Future[np.ndarray]:
        """``verify`` started now, as a future of the running loop: what the server's sequencer
        holds per Submit. Tiers that can resolve a loop future directly override it (no Task).

        ``hold_s``: more batches of the same tick follow within about that long, so a tier that
        groups batches into parcels may wait for them (``LocalValidators``); others ignore it."""
        return asyncio.ensure_future(self.verify(records, signatures))

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the workers."""

    @abc.abstractmethod
    def stats(self) -> ValidatorStats:
        """Counters since start."""
