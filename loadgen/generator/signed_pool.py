"""Signed transfer pools: generated and signed ahead of the schedule, cached on disk across trials.

Signing costs ~55 us per transfer (wallet key derivation plus the signature), as much CPU as the
validators spend verifying, so it must not run inside a measured window. A signed pool is built
before the run (over every core), written to the cache, and read back by later trials of the same
(seed, accounts, workload and pool parameters) in well under a second.

Unlike ``BatchPool``, a signed pool cannot be replayed with fresh ids: the signature covers the
transfer id and timestamp, so every transfer of the run must be signed once. Size the pool to the
run (rate x duration); ``SignedPool.next`` says so when a run outlasts its pool.

Cache file: one ``.npz`` (records, signatures, the parameters as JSON); zip's CRC32 per member
catches damage on read. A damaged or mismatching file is rebuilt, with a warning saying why.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import msgspec
import numpy as np

from engine.records import SIGNATURE_BYTES, TRANSFER_DTYPE
from engine.signing import DERIVATION_VERSION, default_cache_dir, sign_records_parallel
from loadgen.generator.workload import Workload, WorkloadConfig

log = logging.getLogger(__name__)

#: Version of the signed-pool cache file. History: 1 = npz of records, signatures, params JSON.
POOL_FORMAT = 1


class SignedPoolParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything a signed pool's bytes depend on (its cache key)."""

    workload: WorkloadConfig
    batches: int
    batch_size: int
    operator: int = 0
    first_id: int = 0
    payer_range: tuple[int, int] | None = None
    stream: int = 0

    def __post_init__(self) -> None:
        if self.batches < 1 or self.batch_size < 1:
            raise ValueError("a signed pool needs at least one batch of at least one transfer")

    def key(self) -> bytes:
        """The canonical bytes that name this pool (format and key-derivation versions included)."""
        return msgspec.json.encode([POOL_FORMAT, DERIVATION_VERSION, self])


class PoolExhausted(RuntimeError):
    """A run asked for more signed batches than its pool holds."""


class SignedPool:
    """Signed batches in order: ``next()`` gives (records, signatures blob) until the pool ends."""

    def __init__(self, params: SignedPoolParams, records: np.ndarray, signatures: np.ndarray) -> None:
        n = params.batches * params.batch_size
        if records.dtype != TRANSFER_DTYPE or records.shape != (n,) or signatures.shape != (n, SIGNATURE_BYTES):
            raise ValueError(f"signed pool arrays do not match its parameters ({n} transfers)")
        self.params = params
        self.records = records
        self.signatures = signatures
        #: True if read from the cache, False if generated and signed by this call.
        self.from_cache = False
        #: Why an existing cache file was not used, or None.
        self.rebuilt_because: str | None = None
        self._next = 0

    def __len__(self) -> int:
        return self.params.batches

    def batch(self, i: int) -> tuple[np.ndarray, bytes]:
        """Batch ``i``: its records and its signatures (64 bytes per transfer, in order)."""
        k = self.params.batch_size
        return self.records[i * k : (i + 1) * k], self.signatures[i * k : (i + 1) * k].tobytes()

    def next(self) -> tuple[np.ndarray, bytes]:
        """The next signed batch; PoolExhausted once every batch was taken."""
        if self._next >= self.params.batches:
            raise PoolExhausted(
                f"the signed pool's {self.params.batches} batches of {self.params.batch_size} are used up; signatures "
                "cover ids, so a pool cannot be replayed: build one of at least rate x duration transfers"
            )
        self._next += 1
        return self.batch(self._next - 1)


def pool_path(params: SignedPoolParams, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the pool of ``params`` is cached."""
    digest = hashlib.blake2b(params.key(), digest_size=12).hexdigest()
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"signed-pool-{digest}.npz"


def generate_signed_pool(params: SignedPoolParams, *, processes: int | None = None) -> SignedPool:
    """Generate the pool's batches from its workload and sign them (over ``processes`` processes)."""
    workload = Workload(params.workload, stream=params.stream)
    k = params.batch_size
    records = np.concatenate(
        [
            workload.batch(
                k, first_id=params.first_id + i * k, operator=params.operator, payer_range=params.payer_range
            )
            for i in range(params.batches)
        ]
    )
    blob = sign_records_parallel(records, params.workload.seed, processes=processes)
    signatures = np.frombuffer(blob, dtype=np.uint8).reshape(len(records), SIGNATURE_BYTES)
    return SignedPool(params, records, signatures)


def signed_pool(
    params: SignedPoolParams, cache_dir: str | os.PathLike[str] | None = None, *, processes: int | None = None
) -> SignedPool:
    """The signed pool of ``params``: from the cache if there and whole, else generated, signed, cached."""
    path = pool_path(params, cache_dir)
    reason: str | None = None
    if path.exists():
        try:
            pool = _load(path, params)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("signed pool cache %s is unusable (%s); rebuilding it", path, reason)
        else:
            pool.from_cache = True
            return pool
    pool = generate_signed_pool(params, processes=processes)
    pool.rebuilt_because = reason
    _save(path, pool)
    return pool


def _load(path: Path, params: SignedPoolParams) -> SignedPool:
    with np.load(path, allow_pickle=False) as data:
        stored = data["params"].tobytes()
        if stored != params.key():
            raise ValueError(f"{path} holds another pool ({stored[:200]!r})")
        records = data["records"]
        signatures = data["signatures"]
    return SignedPool(params, records, signatures)


def _save(path: Path, pool: SignedPool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                records=pool.records,
                signatures=pool.signatures,
                params=np.frombuffer(pool.params.key(), dtype=np.uint8),
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
