"""The validation tier on a Ray cluster: validator actors holding replicated registry partitions.

``--validators ray:ADDRESS`` (or ``ray:auto``) connects to a Ray cluster started the way Ray's
docs describe (``ray start --head`` on one machine, ``ray start --address HEAD:PORT`` on the
others) and runs one validator actor per CPU of the cluster (or ``actors``), spread over its nodes.

Partitions and replicas
    Across machines the registry is not one page-cached file: at 1.4e9 accounts it is 45 GB, more
    than a node should hold. So the payer range is cut into one partition per actor, and actor i
    holds partitions i, i+1, ..., i+replicas-1 (mod the count). Keys travel once, through Ray's
    object store (one ``ray.put`` per partition, shared by its replicas). A batch is split by
    payer partition into chunks; each chunk goes to a live holder of its partition, round robin.

A dead actor
    A chunk whose actor died (``RayActorError``) is sent to another holder of its partition; the
    dead actor is dropped (actors run with ``max_restarts=0``, so the tier, not Ray, decides what
    is retried, and nothing is verified twice into the result). When no live holder of a
    partition is left, or a chunk met ``max_attempts`` dead actors, the batch fails with
    ``ValidatorsUnavailable``: refused, never applied unverified. Verdicts are the same function
    as the local tier's (``engine.signing.Verifier``), so Ray and local give equal codes.

Ray is an optional extra (``pip install 'cbdc-bench[ray]'``); this module imports it only when a
tier starts, so the engine runs without it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import msgspec
import numpy as np

from engine.codes import CODE_DTYPE, ResultCode
from engine.records import SIGNATURE_BYTES, TRANSFER_DTYPE
from engine.signing import KeyRegistry, PublicKeys, Verifier, pair_count
from engine.validator_api import Validators, ValidatorStats, ValidatorsUnavailable


class PartitionValidator:
    """A validator actor's state: the key partitions it holds (wrapped with ``ray.remote`` at start)."""

    def __init__(self, partitions: list[int], first_accounts: list[int], counts: list[int], *blobs: bytes) -> None:
        self._verifiers = {
            p: Verifier(PublicKeys(blob, first, count))
            for p, first, count, blob in zip(partitions, first_accounts, counts, blobs, strict=True)
        }

    def ready(self) -> tuple[int, list[int]]:
        """(pid, partitions held): the driver waits for this before the tier counts as started."""
        return os.getpid(), sorted(self._verifiers)

    def verify(self, partition: int, records: bytes, signatures: bytes) -> bytes:
        """Verdict codes of one chunk whose payers lie in ``partition``."""
        return self._verifiers[partition].verify(records, signatures).tobytes()


class RayValidators(Validators):
    """Validator actors on a Ray cluster (module docstring); the same verdicts as ``LocalValidators``."""

    def __init__(
        self,
        registry: KeyRegistry,
        *,
        address: str = "auto",
        actors: int | None = None,
        replicas: int = 2,
        chunk_transfers: int = 512,
        max_attempts: int = 3,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if actors is not None and actors < 1:
            raise ValueError(f"a Ray validator tier needs at least one actor, got {actors}")
        if replicas < 1 or chunk_transfers < 1 or max_attempts < 1:
            raise ValueError("replicas, chunk_transfers and max_attempts must be >= 1")
        self.registry = registry
        self.address = address
        self.workers = actors or 0  # known once started when None
        self.replicas = replicas
        self.chunk_transfers = chunk_transfers
        self.max_attempts = max_attempts
        self.init_options = init_options or {}
        self._actors: list[Any] = []
        self._live: set[int] = set()
        self._holders: list[list[int]] = []
        self._bounds = np.zeros(1, dtype=np.int64)
        self._turn = itertools.count()
        self._owns_ray = False
        self._stats = ValidatorStats(kind="ray", workers=self.workers)

    async def start(self) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ValidatorsUnavailable(
                f"--validators ray:{self.address} needs Ray: pip install 'cbdc-bench[ray]' ({exc})"
            ) from exc
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_options)
            self._owns_ray = True
        n = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.workers = self._stats.workers = n
        accounts = self.registry.accounts
        self._bounds = np.linspace(0, accounts, n + 1).astype(np.int64)
        firsts = self._bounds[:-1].tolist()
        counts = np.diff(self._bounds).tolist()
        refs = [ray.put(self.registry.partition(lo, lo + c)) for lo, c in zip(firsts, counts, strict=True)]
        remote_cls = ray.remote(PartitionValidator)
        replicas = min(self.replicas, n)
        self._holders = [[] for _ in range(n)]
        for a in range(n):
            held = [(a + k) % n for k in range(replicas)]
            for p in held:
                self._holders[p].append(a)
            actor = remote_cls.options(
                num_cpus=1, max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD"
            ).remote(held, [firsts[p] for p in held], [counts[p] for p in held], *[refs[p] for p in held])
            self._actors.append(actor)
        try:
            await asyncio.gather(*(a.ready.remote() for a in self._actors))
        except ray.exceptions.RayError as exc:
            raise ValidatorsUnavailable(f"Ray validator actors failed to start: {exc}") from exc
        self._live = set(range(n))

    def actor_handles(self) -> list[Any]:
        """The live actors' handles (tests kill them)."""
        return [self._actors[a] for a in sorted(self._live)]

    async def verify(self, records: bytes, signatures: bytes) -> np.ndarray:
        n = pair_count(records, signatures)
        if not self._holders:
            raise ValidatorsUnavailable("the Ray validator tier is not started: call start() first")
        codes = np.full(n, ResultCode.BAD_SIGNATURE, dtype=CODE_DTYPE)  # payers without a key stay so
        self._stats.batches += 1
        self._stats.transfers += n
        if n == 0:
            return codes
        payer = np.frombuffer(records, dtype=TRANSFER_DTYPE)["payer"]
        part = np.searchsorted(self._bounds, payer, side="right") - 1
        rec = np.frombuffer(records, dtype=np.uint8).reshape(n, TRANSFER_DTYPE.itemsize)
        sig = np.frombuffer(signatures, dtype=np.uint8).reshape(n, SIGNATURE_BYTES)
        jobs = []
        for p in range(len(self._holders)):
            idx = np.flatnonzero(part == p)
            for o in range(0, len(idx), self.chunk_transfers):
                take = idx[o : o + self.chunk_transfers]
                jobs.append(self._chunk(p, take, rec[take].tobytes(), sig[take].tobytes()))
        self._stats.chunks += len(jobs)
        try:
            for take, verdicts in await asyncio.gather(*jobs):
                codes[take] = verdicts
        except ValidatorsUnavailable:
            self._stats.failed_batches += 1
            raise
        return codes

    async def _chunk(self, partition: int, take: np.ndarray, records: bytes, signatures: bytes) -> tuple[Any, Any]:
        import ray

        for attempt in range(self.max_attempts):
            holders = [a for a in self._holders[partition] if a in self._live]
            if not holders:
                raise ValidatorsUnavailable(
                    f"no live Ray validator holds key partition {partition} (accounts "
                    f"{self._bounds[partition]}..{self._bounds[partition + 1] - 1}); start more actors or replicas"
                )
            a = holders[next(self._turn) % len(holders)]
            try:
                blob = await self._actors[a].verify.remote(partition, records, signatures)
            except ray.exceptions.RayActorError:
                if a in self._live:
                    self._live.discard(a)
                    self._stats.worker_deaths += 1
                if attempt + 1 < self.max_attempts:
                    self._stats.requeued_chunks += 1
                continue
            return take, np.frombuffer(blob, dtype=CODE_DTYPE)
        raise ValidatorsUnavailable(f"a chunk of partition {partition} met {self.max_attempts} dead Ray validators")

    async def close(self) -> None:
        if not self._actors:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors.clear()
        self._live.clear()
        if self._owns_ray:
            ray.shutdown()

    def stats(self) -> ValidatorStats:
        return msgspec.structs.replace(self._stats)
