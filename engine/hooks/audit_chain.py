"""audit_chain: a tamper-evident hash chain with a Merkle root per batch.

The "blockchain-style immutable records" promise (docs/design.md), without a blockchain's consensus.
Per applied batch:

* leaves: the batch's records and result codes in chunks of ``leaf_transfers`` transfers;
  ``leaf = H(0x00 || records of the chunk (48 bytes each) || their codes (1 byte each))``;
* the Merkle root over the leaves, ``node = H(0x01 || left || right)``, an odd node carried up
  unchanged (the 0x00/0x01 prefixes keep a leaf from posing as a node, as in RFC 6962);
* the batch root, chained to the previous one:
  ``root_k = H(0x02 || root_{k-1} || k (u64 LE) || n (u32 LE) || merkle_root)``, root_{-1} = 32 zero bytes.

Hashing whole chunks rather than single transfers keeps Python calls per batch in the hundreds,
not thousands; a modified record still changes its chunk's leaf and so the root. ``H`` is SHA-256
(hardware-accelerated on most x86 and ARM CPUs) or BLAKE2b-256.

With ``path`` set, every batch is appended to a chain file that ``verify_chain`` (and
``cbdc-bench verify-chain FILE``) checks: it recomputes every root from the stored records and
names the first batch whose records, codes or links were modified. A chain proves integrity only
relative to a trusted head: whoever can rewrite the whole file can recompute every root, so pass
the head the engine reported (``--expect-head``) to detect that too.

File layout (little-endian): header ``b"CBDCAUD1"``, algorithm name (16 bytes, NUL-padded),
leaf_transfers (u32); then per batch: k (u64), n (u32), root_{k-1} (32), root_k (32), the n
records (48 bytes each), the n codes (1 byte each).
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import msgspec
import numpy as np

from engine.hooks.base import Hook, LedgerView
from engine.records import TRANSFER_DTYPE

MAGIC = b"CBDCAUD1"
FILE_HEADER = struct.Struct("<8s16sI")
BATCH_HEADER = struct.Struct("<QI32s32s")
DIGEST_BYTES = 32
GENESIS = bytes(DIGEST_BYTES)
_RECORD_BYTES = TRANSFER_DTYPE.itemsize

#: Makes a hash object with a 32-byte digest, optionally fed a first chunk.
HashFactory = Callable[..., Any]

Algorithm = Literal["sha256", "blake2b"]


class AuditChainConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    algorithm: Algorithm = "sha256"
    #: Transfers per Merkle leaf.
    leaf_transfers: int = 64
    #: Chain file to append every batch to; "" keeps only the roots in memory.
    path: str = ""
    deferred: bool = True
    #: Batch roots kept in memory (the newest), besides the head.
    keep_roots: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.leaf_transfers <= 1 << 16:
            raise ValueError(f"leaf_transfers must be in 1..65536, got {self.leaf_transfers}")
        if self.keep_roots < 0:
            raise ValueError(f"keep_roots must be >= 0, got {self.keep_roots}")


def hasher(algorithm: str) -> HashFactory:
    """A constructor of 32-byte-digest hash objects for ``algorithm``."""
    if algorithm == "sha256":
        return hashlib.sha256
    if algorithm == "blake2b":
        return lambda data=b"": hashlib.blake2b(data, digest_size=DIGEST_BYTES)
    raise ValueError(f"unknown hash algorithm {algorithm!r}; choose sha256 or blake2b")


def batch_root(
    new: HashFactory, leaf_transfers: int, prev: bytes, seq: int, records: bytes | memoryview, codes: bytes | memoryview
) -> bytes:
    """The chained root of batch ``seq`` from its raw records and codes (see the module docstring)."""
    n = len(codes)
    rec, cod = memoryview(records), memoryview(codes)
    step = leaf_transfers * _RECORD_BYTES
    level = []
    for i in range(0, n, leaf_transfers):
        h = new(b"\x00")
        h.update(rec[i * _RECORD_BYTES : i * _RECORD_BYTES + step])
        h.update(cod[i : i + leaf_transfers])
        level.append(h.digest())
    while len(level) > 1:
        nxt = [new(b"\x01" + level[j] + level[j + 1]).digest() for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    merkle = level[0] if level else GENESIS
    return new(b"\x02" + prev + struct.pack("<QI", seq, n) + merkle).digest()


class AuditChain(Hook):
    name = "audit_chain"
    snapshot_arrays = ()
    snapshot_scalars = ("head", "batches", "file_bytes")

    def __init__(self, config: AuditChainConfig | None = None) -> None:
        self.config = config or AuditChainConfig()
        self.deferred = self.config.deferred
        self._new = hasher(self.config.algorithm)
        self.head = GENESIS
        self.batches = 0
        self.roots: deque[bytes] = deque(maxlen=self.config.keep_roots)
        self.file_bytes = 0
        self._file: IO[bytes] | None = None

    def output_files(self) -> list[Path]:
        return [Path(self.config.path)] if self.config.path else []

    def attach(self, ledger: LedgerView) -> None:
        if self.config.path and not self.resuming:  # resuming: restore_scalars reopens the file
            path = Path(self.config.path)
            if path.exists() and path.stat().st_size:
                raise ValueError(f"audit chain file {path} exists and is not empty; a chain starts a new file")
            self._file = path.open("wb")
            algo = self.config.algorithm.encode()
            self._write(FILE_HEADER.pack(MAGIC, algo, self.config.leaf_transfers))

    def state_scalars(self) -> dict[str, Any]:
        return super().state_scalars() | {"roots": list(self.roots)}

    def restore_scalars(self, scalars: dict[str, Any]) -> None:
        """The chain as of the snapshot; its file is cut back to the snapshot's length and continued.

        The snapshot writer fsynced the file after ``prepare_snapshot`` flushed it, so a file
        shorter than the snapshot says was changed by something else: refuse rather than fork the chain.
        """
        super().restore_scalars(scalars)
        self.roots.clear()
        self.roots.extend(scalars["roots"])
        if not self.config.path:
            return
        path = Path(self.config.path)
        size = path.stat().st_size if path.exists() else 0
        if size < self.file_bytes:
            raise ValueError(
                f"audit chain file {path} holds {size} bytes, the snapshot's chain {self.file_bytes}: it was "
                "truncated or replaced after the snapshot. Move it aside and start again: recovery then "
                "replays the whole journal into a new chain file"
            )
        self._file = path.open("r+b")
        self._file.truncate(self.file_bytes)
        self._file.seek(self.file_bytes)

    def prepare_snapshot(self) -> None:
        if self._file is not None:
            self._file.flush()

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        records = np.ascontiguousarray(batch).view(np.uint8).data
        code_bytes = np.ascontiguousarray(codes, dtype=np.uint8).data
        prev, seq = self.head, self.batches
        self.head = batch_root(self._new, self.config.leaf_transfers, prev, seq, records, code_bytes)
        self.batches += 1
        self.roots.append(self.head)
        if self._file is not None:
            self._write(BATCH_HEADER.pack(seq, len(codes), prev, self.head))
            self._write(records)
            self._write(code_bytes)

    def _write(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        self.file_bytes += self._file.write(data)

    def stats(self) -> dict[str, int | str]:
        return {"batches": self.batches, "head": self.head.hex(), "file_bytes": self.file_bytes}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _failed(seq: int, transfers: int, head: bytes, problem: str) -> ChainReport:
    return ChainReport(False, seq, transfers, head.hex(), seq, problem)


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Outcome of ``verify_chain``: ``bad_batch`` is the first batch found modified, if any."""

    ok: bool
    batches: int
    transfers: int
    head: str
    bad_batch: int | None = None
    problem: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"chain ok: {self.batches} batches, {self.transfers} transfers, head {self.head}"
        where = "" if self.bad_batch is None else f"batch {self.bad_batch}: "
        return f"chain FAILED at {where}{self.problem} ({self.batches} batches verified before it)"


def verify_chain(path: str | Path, expect_head: str | None = None) -> ChainReport:
    """Recompute every batch root of the chain file at ``path`` and check the links."""
    with Path(path).open("rb") as f:
        header = f.read(FILE_HEADER.size)
        if len(header) < FILE_HEADER.size:
            return ChainReport(False, 0, 0, "", None, "file too short for a chain header")
        magic, algo, leaf_transfers = FILE_HEADER.unpack(header)
        if magic != MAGIC:
            return ChainReport(False, 0, 0, "", None, f"not an audit chain file (magic {magic!r})")
        try:
            new = hasher(algo.rstrip(b"\0").decode("ascii", "replace"))
        except ValueError as exc:
            return ChainReport(False, 0, 0, "", None, str(exc))
        if leaf_transfers < 1:
            return ChainReport(False, 0, 0, "", None, f"bad leaf_transfers {leaf_transfers} in header")
        head, seq, transfers = GENESIS, 0, 0
        while True:
            raw = f.read(BATCH_HEADER.size)
            if not raw:
                break

            if len(raw) < BATCH_HEADER.size:
                return _failed(seq, transfers, head, "truncated batch header")
            k, n, prev, root = BATCH_HEADER.unpack(raw)
            if k != seq:
                return _failed(
                    seq, transfers, head, f"batch number {k} where {seq} was expected (batches removed or reordered)"
                )
            if prev != head:
                return _failed(
                    seq,
                    transfers,
                    head,
                    "does not link to the previous batch's root (chain broken or earlier root altered)",
                )
            records = f.read(n * _RECORD_BYTES)
            codes = f.read(n)
            if len(records) < n * _RECORD_BYTES or len(codes) < n:
                return _failed(seq, transfers, head, "truncated records")
            if batch_root(new, leaf_transfers, prev, k, records, codes) != root:
                return _failed(
                    seq,
                    transfers,
                    head,
                    "contents do not match the stored root (records, result codes or the root were modified)",
                )
            head, seq, transfers = root, seq + 1, transfers + n
    if expect_head is not None and head.hex() != expect_head.lower():
        return ChainReport(
            False, seq, transfers, head.hex(), None, f"head {head.hex()} is not the expected {expect_head}"
        )
    return ChainReport(True, seq, transfers, head.hex())
