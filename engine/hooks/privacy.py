"""privacy: the privacy-preserving alternative to surveillance_log.

"Privacy-preserving computing" is promised (docs/design.md); this hook is what it can mean for payment
analytics, and the comparison point for surveillance_log. It keeps aggregates by (region,
category) only: per cell, the number of accepted payments, their total amount, rejected payments,
and an estimate of the distinct payers. Nothing per person is retained:

* A payer is seen only as a keyed pseudonym, SipHash-2-4 of the account id under a 128-bit key
  drawn from the OS at start and never reported. A journalled server's snapshots hold it (so a
  restart continues the same sketches); they sit beside the journal, which holds every payer.
  Without the key pseudonyms cannot be linked back to accounts by trying all ids; a new key each
  run makes runs unlinkable.
* Distinct payers are counted with a HyperLogLog sketch per cell (2**hll_precision one-byte
  registers, standard error about 1.04 / sqrt(2**hll_precision)); a register keeps only the
  longest run of leading zero bits seen among pseudonym hashes, not the pseudonyms.

``region = min(location_cell // cells_per_region, regions - 1)``; categories beyond the known
ones share one "other" column. Observe is deferred by default.
"""

from __future__ import annotations

import secrets

import msgspec
import numpy as np

from engine.categories import Category
from engine.codes import ResultCode
from engine.hooks.base import Hook

#: Category columns: the known categories, then one "other".
CATEGORY_COLUMNS = len(Category) + 1


class PrivacyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    regions: int = 64
    #: Location cells per region (the workload draws cells in 0..2**20).
    cells_per_region: int = 1 << 14
    #: log2 of the HyperLogLog registers per (region, category) cell.
    hll_precision: int = 6
    deferred: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.regions <= 1 << 16:
            raise ValueError(f"regions must be in 1..65536, got {self.regions}")
        if self.cells_per_region < 1:
            raise ValueError(f"cells_per_region must be >= 1, got {self.cells_per_region}")
        if not 4 <= self.hll_precision <= 16:
            raise ValueError(f"hll_precision must be in 4..16, got {self.hll_precision}")


def _rotl(x: np.ndarray, b: int) -> np.ndarray:
    return (x << np.uint64(b)) | (x >> np.uint64(64 - b))


def _sipround(v: list[np.ndarray]) -> None:
    v0, v1, v2, v3 = v
    v0 += v1
    v1 = _rotl(v1, 13)
    v1 ^= v0
    v0 = _rotl(v0, 32)
    v2 += v3
    v3 = _rotl(v3, 16)
    v3 ^= v2
    v0 += v3
    v3 = _rotl(v3, 21)
    v3 ^= v0
    v2 += v1
    v1 = _rotl(v1, 17)
    v1 ^= v2
    v2 = _rotl(v2, 32)
    v[:] = [v0, v1, v2, v3]


def siphash24(key: bytes, values: np.ndarray) -> np.ndarray:
    """SipHash-2-4 of each value as an 8-byte little-endian message, vectorised (uint64 out)."""
    if len(key) != 16:
        raise ValueError("SipHash takes a 16-byte key")
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    m = values.astype(np.uint64)
    n = len(m)

    def lane(c: int) -> np.ndarray:
        return np.full(n, c, dtype=np.uint64)

    v = [lane(k0 ^ 0x736F6D6570736575), lane(k1 ^ 0x646F72616E646F6D), lane(k0 ^ 0x6C7967656E657261)]
    v.append(lane(k1 ^ 0x7465646279746573) ^ m)
    _sipround(v)
    _sipround(v)
    v[0] ^= m
    last = np.uint64(8 << 56)  # the final block: message length 8 in the top byte
    v[3] ^= last
    _sipround(v)
    _sipround(v)
    v[0] ^= last
    v[2] ^= np.uint64(0xFF)
    for _ in range(4):
        _sipround(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def bit_length(x: np.ndarray) -> np.ndarray:
    """Exact bit length of each uint64 (float64 is exact below 2**53, so split at 32 bits)."""
    hi = (x >> np.uint64(32)).astype(np.float64)
    lo = (x & np.uint64(0xFFFFFFFF)).astype(np.float64)
    _, e_hi = np.frexp(hi)
    _, e_lo = np.frexp(lo)
    return np.where(hi > 0, e_hi + 32, e_lo).astype(np.int64)


def hll_position(hashes: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """HyperLogLog register index (top ``precision`` bits) and rank (leading zeros + 1 of the rest)."""
    rest_bits = 64 - precision
    index = (hashes >> np.uint64(rest_bits)).astype(np.int64)
    rest = hashes & np.uint64((1 << rest_bits) - 1)
    return index, (rest_bits - bit_length(rest) + 1).astype(np.uint8)


def hll_estimate(registers: np.ndarray) -> float:
    """Distinct-count estimate from one sketch's registers (with the small-range correction)."""
    m = len(registers)
    alpha = {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1 + 1.079 / m))
    raw = alpha * m * m / float(np.sum(np.ldexp(1.0, -registers.astype(np.int64))))
    zeros = int(np.count_nonzero(registers == 0))
    if raw <= 2.5 * m and zeros:
        return m * float(np.log(m / zeros))
    return raw


class Privacy(Hook):
    name = "privacy"
    snapshot_arrays = ("accepted", "amount_fen", "rejected", "registers")
    #: The pseudonym key is in the snapshot: registers filled under two keys would count a payer
    #: seen before and after a restart twice. A snapshot sits beside the journal, which holds
    #: every payer in the clear, so the key tells its reader nothing the journal does not.
    snapshot_scalars = ("_key",)

    def __init__(self, config: PrivacyConfig | None = None, *, key: bytes | None = None) -> None:
        """``key``: the pseudonym key; tests pass one to compare with the reference model."""
        self.config = config or PrivacyConfig()
        self.deferred = self.config.deferred
        self._key = secrets.token_bytes(16) if key is None else key
        c = self.config
        cells = c.regions * CATEGORY_COLUMNS
        self.accepted = np.zeros(cells, dtype=np.int64)
        self.amount_fen = np.zeros(cells, dtype=np.int64)
        self.rejected = np.zeros(cells, dtype=np.int64)
        self.registers = np.zeros((cells, 1 << c.hll_precision), dtype=np.uint8)

    def cells(self, batch: np.ndarray) -> np.ndarray:
        """Flat (region, category) cell of each transfer."""
        c = self.config
        region = np.minimum(batch["location_cell"] // c.cells_per_region, c.regions - 1).astype(np.int64)
        category = np.minimum(batch["category"], CATEGORY_COLUMNS - 1)
        return region * CATEGORY_COLUMNS + category

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        cell = self.cells(batch)
        ok = codes == ResultCode.OK
        n_cells = len(self.accepted)
        self.accepted += np.bincount(cell[ok], minlength=n_cells)
        self.rejected += np.bincount(cell[~ok], minlength=n_cells)
        # Amounts are whole fen: add with integer ufunc.at, not bincount's float64 weights.
        np.add.at(self.amount_fen, cell[ok], batch["amount_fen"][ok])
        payer = batch["payer"][ok]
        index, rank = hll_position(siphash24(self._key, payer), self.config.hll_precision)
        np.maximum.at(self.registers, (cell[ok], index), rank)

    def aggregates(self) -> list[dict[str, int | float | str]]:
        """Non-empty cells: region, category, accepted, amount_fen, rejected, distinct_payers (estimate)."""
        out: list[dict[str, int | float | str]] = []
        for flat in np.flatnonzero(self.accepted + self.rejected).tolist():
            region, col = divmod(flat, CATEGORY_COLUMNS)
            out.append(
                {
                    "region": region,
                    "category": Category(col).name if col < len(Category) else "OTHER",
                    "accepted": int(self.accepted[flat]),
                    "amount_fen": int(self.amount_fen[flat]),
                    "rejected": int(self.rejected[flat]),
                    "distinct_payers": hll_estimate(self.registers[flat]),
                }
            )
        return out

    def store_bytes(self) -> int:
        return self.accepted.nbytes + self.amount_fen.nbytes + self.rejected.nbytes + self.registers.nbytes

    def stats(self) -> dict[str, int]:
        return {
            "accepted": int(self.accepted.sum()),
            "rejected": int(self.rejected.sum()),
            "store_bytes": self.store_bytes(),
        }
