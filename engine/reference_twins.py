"""Reference (oracle) versions of the built-in hooks: plain Python, one transfer at a time.

Each implements ``engine.reference.ReferenceHook`` and shares no logic with its vectorised twin
in ``engine.hooks``: sets and dicts instead of flag bits and lookup tables, ``struct.pack`` per
record instead of raw batch bytes, integer SipHash instead of numpy lanes. Each class's
``mirror(hook)`` builds the reference twin of a configured, attached hook from its configuration
and its starting state (the seeded lists and scores); the hook registry
(``engine.hooks.registry``) names each built-in hook's twin, and ``engine.reference_hooks``
mirrors a whole ledger with it, so differential tests can run any profile on both ledgers.
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque

import numpy as np

from engine.accounts import FLAG_BLACKLISTED, FLAG_FROZEN
from engine.categories import Category
from engine.codes import ResultCode
from engine.hooks.audit_chain import AuditChain
from engine.hooks.blacklist import Blacklist
from engine.hooks.freeze import Freeze
from engine.hooks.privacy import Privacy
from engine.hooks.social_credit import SocialCredit
from engine.hooks.surveillance_log import SurveillanceLog
from engine.reference import ReferenceLedger, Tx

_FIELDS = (
    "transfer_id",
    "timestamp_ns",
    "amount_fen",
    "device_id",
    "payer",
    "payee",
    "location_cell",
    "operator",
    "category",
)
_RECORD = struct.Struct("<qqqQIIIHH")  # TRANSFER_DTYPE, field by field
_M64 = (1 << 64) - 1


class _Base:
    name = ""

    def begin_batch(self, txs: list[Tx]) -> None:
        pass

    def authorize_one(self, tx: Tx, ledger: ReferenceLedger) -> int:
        return 0

    def observe_batch(self, txs: list[Tx], codes: list[int]) -> None:
        pass


class RefBlacklist(_Base):
    name = "blacklist"

    def __init__(self, listed: set[int], restricted: set[int]) -> None:
        self.listed, self.restricted = set(listed), set(restricted)

    @classmethod
    def mirror(cls, hook: Blacklist) -> RefBlacklist:
        listed = set(np.flatnonzero(hook._flags & FLAG_BLACKLISTED).tolist())
        return cls(listed, _categories(hook.config.restricted))

    def add(self, accounts: list[int]) -> None:
        self.listed.update(accounts)

    def remove(self, accounts: list[int]) -> None:
        self.listed.difference_update(accounts)

    def authorize_one(self, tx: Tx, ledger: ReferenceLedger) -> int:
        if tx["payer"] in self.listed and tx["category"] in self.restricted:
            return ResultCode.BLACKLISTED
        return 0


class RefFreeze(_Base):
    name = "freeze"

    def __init__(self, frozen: set[int]) -> None:
        self.frozen = set(frozen)

    @classmethod
    def mirror(cls, hook: Freeze) -> RefFreeze:
        return cls(set(np.flatnonzero(hook._flags & FLAG_FROZEN).tolist()))

    def freeze(self, accounts: list[int]) -> None:
        self.frozen.update(accounts)

    def unfreeze(self, accounts: list[int]) -> None:
        self.frozen.difference_update(accounts)

    def authorize_one(self, tx: Tx, ledger: ReferenceLedger) -> int:
        return ResultCode.FROZEN if tx["payer"] in self.frozen or tx["payee"] in self.frozen else 0


class RefSocialCredit(_Base):
    name = "social_credit"

    def __init__(
        self, scores: list[int], threshold: int, restricted: set[int], deltas: dict[int, int], lo: int, hi: int
    ) -> None:
        self.scores = list(scores)
        self.threshold, self.restricted, self.deltas, self.lo, self.hi = threshold, restricted, deltas, lo, hi

    @classmethod
    def mirror(cls, hook: SocialCredit) -> RefSocialCredit:
        sc = hook.config
        deltas = {int(Category[k]): v for k, v in sc.deltas.items() if v}
        return cls(hook.score.tolist(), sc.threshold, _categories(sc.restricted), deltas, sc.min_score, sc.max_score)

    def authorize_one(self, tx: Tx, ledger: ReferenceLedger) -> int:
        if tx["category"] in self.restricted and self.scores[tx["payer"]] < self.threshold:
            return ResultCode.CREDIT_RESTRICTED
        return 0

    def observe_batch(self, txs: list[Tx], codes: list[int]) -> None:
        moved: dict[int, int] = {}
        for tx, code in zip(txs, codes, strict=True):
            if code == ResultCode.OK and tx["category"] in self.deltas:
                moved[tx["payer"]] = moved.get(tx["payer"], 0) + self.deltas[tx["category"]]
        for account, total in moved.items():
            self.scores[account] = max(self.lo, min(self.hi, self.scores[account] + total))


class RefSurveillanceLog(_Base):
    """Every observed row in order; ``capacity`` rows for the buffer mode, all of them (None) for a trove."""

    name = "surveillance_log"

    def __init__(self, capacity: int | None) -> None:
        self.rows: deque[tuple[int, ...]] = deque(maxlen=capacity)
        self.seen = 0

    @classmethod
    def mirror(cls, hook: SurveillanceLog) -> RefSurveillanceLog:
        return cls(hook.config.capacity if hook.config.mode == "buffer" else None)

    def observe_batch(self, txs: list[Tx], codes: list[int]) -> None:
        for tx, code in zip(txs, codes, strict=True):
            self.rows.append((*(tx[f] for f in _FIELDS), code))
            self.seen += 1

    def query(self, account: int) -> list[tuple[int, ...]]:
        payer_at, payee_at = _FIELDS.index("payer"), _FIELDS.index("payee")
        return [r for r in self.rows if account in (r[payer_at], r[payee_at])]


class RefAuditChain(_Base):
    name = "audit_chain"

    def __init__(self, algorithm: str, leaf_transfers: int) -> None:
        self.algorithm, self.leaf_transfers = algorithm, leaf_transfers
        self.head = bytes(32)
        self.batches = 0

    @classmethod
    def mirror(cls, hook: AuditChain) -> RefAuditChain:
        return cls(hook.config.algorithm, hook.config.leaf_transfers)

    def _h(self, data: bytes) -> bytes:
        if self.algorithm == "blake2b":
            return hashlib.blake2b(data, digest_size=32).digest()
        return hashlib.sha256(data).digest()

    def _merkle(self, nodes: list[bytes]) -> bytes:
        if len(nodes) == 1:
            return nodes[0]
        paired = [self._h(b"\x01" + nodes[i] + nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
        return self._merkle(paired + ([nodes[-1]] if len(nodes) % 2 else []))

    def observe_batch(self, txs: list[Tx], codes: list[int]) -> None:
        leaves = []
        for i in range(0, len(txs), self.leaf_transfers):
            chunk = txs[i : i + self.leaf_transfers]
            body = b"".join(_RECORD.pack(*(tx[f] for f in _FIELDS)) for tx in chunk)
            leaves.append(self._h(b"\x00" + body + bytes(codes[i : i + self.leaf_transfers])))
        merkle = self._merkle(leaves)
        self.head = self._h(b"\x02" + self.head + struct.pack("<QI", self.batches, len(txs)) + merkle)
        self.batches += 1


def siphash24_int(key: bytes, message: int) -> int:
    """SipHash-2-4 of one 8-byte little-endian message, on Python ints."""
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rotl(x: int, b: int) -> int:
        return ((x << b) | (x >> (64 - b))) & _M64

    def rnd() -> None:
        v[0] = (v[0] + v[1]) & _M64
        v[1] = rotl(v[1], 13) ^ v[0]
        v[0] = rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & _M64
        v[3] = rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & _M64
        v[3] = rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & _M64
        v[1] = rotl(v[1], 17) ^ v[2]
        v[2] = rotl(v[2], 32)

    for block in (message, 8 << 56):
        v[3] ^= block
        rnd()
        rnd()
        v[0] ^= block
    v[2] ^= 0xFF
    for _ in range(4):
        rnd()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


class RefPrivacy(_Base):
    name = "privacy"

    def __init__(self, key: bytes, regions: int, cells_per_region: int, precision: int) -> None:
        self.key, self.regions, self.cells_per_region, self.precision = key, regions, cells_per_region, precision
        self.accepted: dict[tuple[int, int], int] = {}
        self.rejected: dict[tuple[int, int], int] = {}
        self.amount_fen: dict[tuple[int, int], int] = {}
        self.registers: dict[tuple[int, int, int], int] = {}

    @classmethod
    def mirror(cls, hook: Privacy) -> RefPrivacy:
        pc = hook.config
        return cls(hook._key, pc.regions, pc.cells_per_region, pc.hll_precision)

    def observe_batch(self, txs: list[Tx], codes: list[int]) -> None:
        other = len(Category)
        for tx, code in zip(txs, codes, strict=True):
            cell = (min(tx["location_cell"] // self.cells_per_region, self.regions - 1), min(tx["category"], other))
            if code != ResultCode.OK:
                self.rejected[cell] = self.rejected.get(cell, 0) + 1
                continue
            self.accepted[cell] = self.accepted.get(cell, 0) + 1
            self.amount_fen[cell] = self.amount_fen.get(cell, 0) + tx["amount_fen"]
            h = siphash24_int(self.key, tx["payer"])
            rest_bits = 64 - self.precision
            index, rest = h >> rest_bits, h & ((1 << rest_bits) - 1)
            rank = rest_bits - rest.bit_length() + 1
            slot = (*cell, index)
            self.registers[slot] = max(self.registers.get(slot, 0), rank)


def _categories(names: tuple[str, ...]) -> set[int]:
    return {int(Category[n]) for n in names}
