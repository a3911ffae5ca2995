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
import math
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
from engine.hooks.risk_model import RiskModel
from engine.hooks.social_credit import SocialCredit
from engine.hooks.surveillance_log import SurveillanceLog
from engine.reference import ReferenceLedger, Tx
from engine.risk import features as rf
from engine.risk.model import Predictor
from engine.simtime import CST_OFFSET_NS, NS_PER_DAY, NS_PER_HOUR

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

    def lower_scores(self, accounts: list[int], points: int) -> None:
        for account in accounts:
            self.scores[account] = max(self.lo, self.scores[account] - points)

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


class RefRiskModel(_Base):
    """The risk model one payment at a time: per-account lists of ints, the same predictor per row.

    Feature arithmetic is written again here on Python ints (math.frexp for log2, bit loops for
    popcounts); only the constants and decay tables come from ``engine.risk.features``. Rows are
    read as of the batch's start (all rows first), then payments are recorded one by one.
    """

    name = "risk_model"

    def __init__(self, hook: RiskModel) -> None:
        assert hook.predictor is not None, "mirror an attached hook"
        c = hook.config
        self.mode, self.per_payment, self.penalty, self.lag = c.mode, c.inference, c.penalty, c.lag_batches
        self.predictor: Predictor = hook.predictor
        self.threshold = hook.threshold
        self.side, self.bits = c.grid_side_cells, c.grid_side_cells.bit_length() - 1
        self.restricted = _categories(c.restricted)
        f = hook.features
        self.hour_table, self.day_table = f.hour_table.tolist(), f.day_table.tolist()
        self.state: dict[int, list[int]] = {}
        self.pending: deque[list[int]] = deque()
        self.ledger: ReferenceLedger | None = None
        self.social: RefSocialCredit | None = None
        self.blacklist: RefBlacklist | None = None
        self.flagged = self.vetoed = 0
        self.minute = self.batch_ns = 0

    @classmethod
    def mirror(cls, hook: RiskModel) -> RefRiskModel:
        if hook.features.last_minute.any():
            raise ValueError("mirror a risk_model hook before it has seen payments")
        return cls(hook)

    def bind(self, ledger: ReferenceLedger) -> None:
        """Called by ``engine.reference_hooks.reference_for``: the ledger's clock and hooks."""
        self.ledger = ledger
        self.social = next((h for h in ledger.hooks if isinstance(h, RefSocialCredit)), None)
        self.blacklist = next((h for h in ledger.hooks if isinstance(h, RefBlacklist)), None)

    def begin_batch(self, txs: list[Tx]) -> None:
        assert self.ledger is not None, "bind() first"
        ref = self.ledger
        self.batch_ns = ref.clock_start_ns + ref.payments * NS_PER_DAY // max(ref.payments_per_day, 1)
        self.minute = (self.batch_ns - ref.clock_start_ns) // rf.NS_PER_MINUTE + 1
        self._settle(self.lag)

    def _settle(self, keep: int) -> None:
        while self.pending and len(self.pending) >= keep:
            flagged = self.pending.popleft()
            self.flagged += len(flagged)
            if self.social is not None and self.penalty:
                self.social.lower_scores(flagged, self.penalty)

    def flush(self) -> None:
        self._settle(0)

    def _aged(self, account: int) -> list[int]:
        """The account's state decayed and rolled to this batch's minute (a new list)."""
        last, ch, cd, rd, ah, ad, dev, blk, last_dev, last_cell = self.state.get(account, [0] * 10)
        if last == 0:
            return [0] * 10
        dt = self.minute - last
        hour = self.hour_table[min(dt, len(self.hour_table) - 1)]
        day = self.day_table[min(dt, len(self.day_table) - 1)]
        shift = (self.minute - 1) // rf.SKETCH_EPOCH_MIN - (last - 1) // rf.SKETCH_EPOCH_MIN
        if shift == 1:
            dev, blk = (dev & 0xFF) << 8, (blk & 0xFF) << 8
        elif shift >= 2:
            dev = blk = 0
        decayed = [ch * hour >> 16, cd * day >> 16, rd * day >> 16, ah * hour >> 16, ad * day >> 16]
        return [last, *decayed, dev, blk, last_dev, last_cell]

    def _block_bit(self, cell: int) -> int:
        x, y = cell & (self.side - 1), cell >> self.bits
        block = (y >> rf.BLOCK_SHIFT) * (self.side >> rf.BLOCK_SHIFT) + (x >> rf.BLOCK_SHIFT)
        return ((block * 2_654_435_761) & 0xFFFF_FFFF) >> 29

    def _apart(self, a: int, b: int) -> int:
        m, s = self.side - 1, self.side
        dx, dy = abs((a & m) - (b & m)), abs((a >> self.bits) - (b >> self.bits))
        return max(min(dx, s - dx), min(dy, s - dy))

    def row(self, tx: Tx, ledger: ReferenceLedger) -> list[int]:
        """The feature row of one payment as of the batch's start (``engine.risk.features.FEATURE_NAMES``)."""
        last, ch, cd, rd, ah, ad, dev, blk, last_dev, last_cell = self._aged(tx["payer"])
        devices, blocks = (dev | dev >> 8) & 0xFF, (blk | blk >> 8) & 0xFF
        amount, device = tx["amount_fen"], tx["device_id"]
        usual = ad * 800 * rf.COUNT_ONE // cd if cd else 0
        listed = self.blacklist.listed if self.blacklist is not None else set()
        return [
            ch,
            cd,
            ah,
            ad,
            rd * 1000 // max(cd, 1),
            bin(devices).count("1"),
            devices >> (device & 7) & 1,
            int(last > 0 and last_dev == (device >> 8) & 0xFFFF),
            bin(blocks).count("1"),
            blocks >> self._block_bit(tx["location_cell"]) & 1,
            self._apart(last_cell, tx["location_cell"]) if last else 0,
            min(self.minute - last, rf.MINUTES_CAP) if last else rf.MINUTES_CAP,
            _log2_q4(amount),
            _log2_q4(amount) - _log2_q4(usual) if usual > 0 else 0,
            ledger.wallet_class[tx["payer"]],
            ledger.wallet_class[tx["payee"]],
            int(tx["payer"] in listed),
            int(tx["payee"] in listed),
            tx["category"],
            (self.batch_ns + CST_OFFSET_NS) // NS_PER_HOUR % 24,
        ]

    def record(self, tx: Tx) -> None:
        _, ch, cd, rd, ah, ad, dev, blk, _, _ = self._aged(tx["payer"])
        one, cap, amount = rf.COUNT_ONE, 0xFFFF, tx["amount_fen"]
        restricted = one if tx["category"] in self.restricted else 0
        self.state[tx["payer"]] = [
            self.minute,
            min(ch + one, cap),
            min(cd + one, cap),
            min(rd + restricted, cap),
            min(ah + min(amount // 100, cap), cap),
            min(ad + min(amount // 800, cap), cap),
            dev | 1 << (tx["device_id"] & 7),
            blk | 1 << self._block_bit(tx["location_cell"]),
            tx["device_id"] >> 8 & 0xFFFF,
            tx["location_cell"],
        ]

    def score(self, row: list[int]) -> float:
        return float(self.predictor.predict(np.array([row], dtype=np.int64))[0])

    def authorize_one(self, tx: Tx, ledger: ReferenceLedger) -> int:
        if self.mode != "authorize" or self.score(self.row(tx, ledger)) <= self.threshold:
            return 0
        self.vetoed += 1
        return ResultCode.RISK_VETO

    def observe_batch(self, txs: list[Tx], codes: list[int]) -> None:
        assert self.ledger is not None
        applied = [tx for tx, code in zip(txs, codes, strict=True) if code == ResultCode.OK]
        if self.mode == "observe":
            rows = [self.row(tx, self.ledger) for tx in applied]
            self.pending.append(
                [tx["payer"] for tx, r in zip(applied, rows, strict=True) if self.score(r) > self.threshold]
            )
        for tx in applied:
            self.record(tx)


def _log2_q4(x: int) -> int:
    """16 * log2(x) piecewise linear between powers of two, for x >= 1; else 0."""
    if x < 1:
        return 0
    m, e = math.frexp(float(x))
    return (e - 1) * 16 + math.floor((2 * m - 1) * 16)


def _categories(names: tuple[str, ...]) -> set[int]:
    return {int(Category[n]) for n in names}
