"""Rolling per-person features for the risk model: integer columns updated once per batch.

Payment-surveillance models score a payment against what the payer did before: how much and how
often lately, from which devices and places, when last and where, how much of it was restricted
spending. Here that history is a handful of integer numpy columns per account (24 bytes), read
as of the start of a batch like all policy state and updated vectorised after it commits.

Time is the sequencer's simulated clock (``engine.clock``), in minutes, one value per batch: the
batch's start. Every payment of a batch therefore has the same "now", which is what makes the
batch update exactly equal to applying the payments one at a time (the reference twin does):

* **Decayed counters** (count and amount over the last hour and the last day, restricted count
  over the day): exponential decay with half-life one hour or one day, in fixed point. Decay is
  lazy: an account's counters are decayed to "now" when it pays, by ``(v * table[dt]) >> 16``
  with a precomputed table of 2**16 * 2**(-dt/half_life) (dt in minutes; 0 beyond 16
  half-lives). Within a batch dt is 0 after the first payment (the table's entry 0 is exactly
  2**16), and adds are non-negative saturating adds, so their order does not matter.
* **Distinct devices and places over about a week**: two 8-bit bitmaps per account (this
  half-week and the last), a device or a 4 x 4-cell block setting one bit chosen by hash; the
  count is the popcount of both (linear-counting sketch; at most 8). A payment's device or block
  "seen" is its bit. Half-weeks roll by the clock; OR is order-free.
* **Last device, cell and time**: the account's last payment in the batch wins (as in sequence).

Bytes per account: ``BYTES_PER_ACCOUNT`` (24); at 1.4e9 accounts that is 33.6 GB, more than the
machine's 24 GiB on its own: national scale needs the features sharded across machines or
narrowed (the capacity plan in the README).

Feature values handed to the model are integers (``FEATURE_NAMES``), converted to float64 only at
the model's door, so batch and one-at-a-time computation agree to the bit.
"""

from __future__ import annotations

import msgspec
import numpy as np

from engine.accounts import class_of_bits
from engine.categories import RESTRICTED_DEFAULT, category_table, check_names
from engine.simtime import CST_OFFSET_NS, NS_PER_HOUR

#: Bumped whenever a feature's meaning or order changes: a model names the version it was trained on.
FEATURE_VERSION = 1
#: The model's input columns, in order (all integers).
FEATURE_NAMES: tuple[str, ...] = (
    "count_hour_q4",  # decayed payments over the last hour, x16
    "count_day_q4",  # ... over the last day, x16
    "amount_hour_yuan",  # decayed amount over the last hour, yuan (saturating at 65,535)
    "amount_day_8yuan",  # ... over the last day, in units of 8 yuan
    "restricted_share_permille",  # restricted categories' share of the day's count
    "devices_week",  # distinct devices over about a week (sketch, 0..8)
    "device_seen",  # this payment's device was seen this week (sketch bit)
    "device_is_last",  # ... and is the device of the last payment
    "blocks_week",  # distinct 4 x 4-cell blocks over about a week (0..8)
    "block_seen",  # this payment's block was seen this week
    "jump_cells",  # Chebyshev distance from the last payment's cell (torus)
    "minutes_since_last",  # since the last payment (65,535: none, or longer)
    "log2_amount_q4",  # log2(amount in fen), x16 (piecewise linear: log2_q4)
    "amount_vs_usual_q4",  # log2(amount / the day's average amount), x16 (0 without history)
    "payer_class",  # wallet class 0..4
    "payee_class",
    "payer_listed",  # on the court blacklist (the blacklist hook's flag bit)
    "payee_listed",
    "category",
    "local_hour",  # China Standard Time hour of the batch
)
N_FEATURES = len(FEATURE_NAMES)

NS_PER_MINUTE = 60 * 10**9
#: Half-lives of the decayed counters, minutes.
HOUR_HALF_LIFE_MIN = 60
DAY_HALF_LIFE_MIN = 1_440
#: One bitmap covers a half-week; the two together about a week.
SKETCH_EPOCH_MIN = 5_040
#: Decay tables reach 16 half-lives; beyond that a counter decays to 0.
_HALF_LIVES = 16
_ONE_Q16 = 1 << 16
_U16_MAX = 0xFFFF
MINUTES_CAP = 0xFFFF
#: Count increments are x16 fixed point.
COUNT_ONE = 16
BLOCK_SHIFT = 2  # a block is 4 x 4 cells
_GOLDEN = 2_654_435_761
BYTES_PER_ACCOUNT = 24


class FeatureConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the features need to know of the world: the location grid and restricted categories."""

    #: The workload's location grid (``[workload.persons] grid_side_cells``), a power of two.
    grid_side_cells: int = 1_024
    restricted: tuple[str, ...] = RESTRICTED_DEFAULT

    def __post_init__(self) -> None:
        side = self.grid_side_cells
        if not 8 <= side <= 1 << 16 or side & (side - 1):
            raise ValueError(f"grid_side_cells must be a power of two in 8..65536, got {side}")
        check_names(self.restricted, "restricted")


def decay_table(half_life_min: int) -> np.ndarray:
    """Q16 multipliers 2**16 * 2**(-dt/half_life) for dt = 0..16 half-lives (the last entry 0)."""
    dt = np.arange(half_life_min * _HALF_LIVES + 1, dtype=np.float64)
    table = np.rint(_ONE_Q16 * np.exp2(-dt / half_life_min)).astype(np.int64)
    table[-1] = 0
    return table


def log2_q4(x: np.ndarray) -> np.ndarray:
    """16 * log2(x) for integers x >= 1, piecewise linear between powers of two (0 for x < 1).

    The exponent and the mantissa's top four bits (frexp): exact, so numpy and the reference's
    math.frexp agree to the bit, and within 0.09 of 16 * log2(x).
    """
    m, e = np.frexp(np.maximum(x, 1).astype(np.float64))
    return np.where(x >= 1, (e.astype(np.int64) - 1) * 16 + np.floor((2 * m - 1) * 16).astype(np.int64), 0)


class Payments(msgspec.Struct, frozen=True):
    """The columns of the payments whose features are read or recorded (one row per payment)."""

    payer: np.ndarray
    payee: np.ndarray
    amount_fen: np.ndarray
    category: np.ndarray
    device_id: np.ndarray
    location_cell: np.ndarray

    @classmethod
    def of(cls, records: np.ndarray) -> Payments:
        return cls(
            records["payer"].astype(np.int64),
            records["payee"].astype(np.int64),
            records["amount_fen"].astype(np.int64),
            records["category"].astype(np.int64),
            records["device_id"],
            records["location_cell"].astype(np.int64),
        )


class RollingFeatures:
    """Per-account rolling history (numpy columns) and the feature rows computed from it."""

    def __init__(self, accounts: int, config: FeatureConfig | None = None) -> None:
        self.config = c = config or FeatureConfig()
        self.accounts = accounts
        #: Minutes since the clock's start + 1 of the last payment; 0 = none yet.
        self.last_minute = np.zeros(accounts, dtype=np.uint32)
        self.count_hour = np.zeros(accounts, dtype=np.uint16)
        self.count_day = np.zeros(accounts, dtype=np.uint16)
        self.restricted_day = np.zeros(accounts, dtype=np.uint16)
        self.amount_hour = np.zeros(accounts, dtype=np.uint16)
        self.amount_day = np.zeros(accounts, dtype=np.uint16)
        #: Low byte: this half-week's bitmap; high byte: the last half-week's.
        self.device_bits = np.zeros(accounts, dtype=np.uint16)
        self.block_bits = np.zeros(accounts, dtype=np.uint16)
        self.last_device = np.zeros(accounts, dtype=np.uint16)
        self.last_cell = np.zeros(accounts, dtype=np.uint32)
        self.hour_table = decay_table(HOUR_HALF_LIFE_MIN)
        self.day_table = decay_table(DAY_HALF_LIFE_MIN)
        self.restricted = category_table(dict.fromkeys(c.restricted, 1), np.bool_)
        self.side = c.grid_side_cells
        self._bits = c.grid_side_cells.bit_length() - 1

    def columns(self) -> tuple[np.ndarray, ...]:
        return (
            self.last_minute,
            self.count_hour,
            self.count_day,
            self.restricted_day,
            self.amount_hour,
            self.amount_day,
            self.device_bits,
            self.block_bits,
            self.last_device,
            self.last_cell,
        )

    def state_bytes(self) -> int:
        return sum(col.nbytes for col in self.columns())

    # ---- helpers shared by reading and recording ------------------------------------------------

    def block_bit(self, cell: np.ndarray) -> np.ndarray:
        """The sketch bit (0..7) of each cell's 4 x 4 block."""
        mask = self.side - 1
        bx, by = (cell & mask) >> BLOCK_SHIFT, (cell >> self._bits) >> BLOCK_SHIFT
        block = by * (self.side >> BLOCK_SHIFT) + bx
        return ((block * _GOLDEN) & 0xFFFF_FFFF) >> 29

    @staticmethod
    def device_bit(device_id: np.ndarray) -> np.ndarray:
        return (device_id & np.uint64(7)).astype(np.int64)

    @staticmethod
    def device_tag(device_id: np.ndarray) -> np.ndarray:
        """16 bits of a device id (ids are hashes) kept as the "last device"."""
        return ((device_id >> np.uint64(8)) & np.uint64(_U16_MAX)).astype(np.int64)

    def _aged(self, accounts: np.ndarray, minute: int) -> tuple[np.ndarray, ...]:
        """The accounts' counters and sketches decayed and rolled to ``minute`` (int64 arrays)."""
        last = self.last_minute[accounts].astype(np.int64)
        dt = np.where(last > 0, minute - last, 1 << 30)
        hour = self.hour_table[np.minimum(dt, len(self.hour_table) - 1)]
        day = self.day_table[np.minimum(dt, len(self.day_table) - 1)]
        epochs = np.where(last > 0, (minute - 1) // SKETCH_EPOCH_MIN - (last - 1) // SKETCH_EPOCH_MIN, 2)
        # Half-weeks passed 0: as is; 1: this half-week's byte becomes the last's; 2 or more: empty.
        shift = np.minimum(epochs, 2) * 8

        def roll(bits: np.ndarray) -> np.ndarray:
            return (bits[accounts].astype(np.int64) << shift) & 0xFFFF

        return (
            (self.count_hour[accounts] * hour) >> 16,
            (self.count_day[accounts] * day) >> 16,
            (self.restricted_day[accounts] * day) >> 16,
            (self.amount_hour[accounts] * hour) >> 16,
            (self.amount_day[accounts] * day) >> 16,
            roll(self.device_bits),
            roll(self.block_bits),
            last,
        )

    def cells_apart(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Chebyshev distance between cells on the torus."""
        mask, s = self.side - 1, self.side
        dx, dy = np.abs((a & mask) - (b & mask)), np.abs((a >> self._bits) - (b >> self._bits))
        return np.maximum(np.minimum(dx, s - dx), np.minimum(dy, s - dy))

    # ---- reading and recording -----------------------------------------------------------------

    def rows(self, p: Payments, minute: int, batch_ns: int, flags: np.ndarray, listed_bit: int) -> np.ndarray:
        """Feature rows (int64, ``FEATURE_NAMES``) of payments ``p`` as of ``minute`` (batch start)."""
        g = _Grouped(p.payer)
        return self._rows(p, g, self._bits_of(p), self._aged(g.accounts, minute), minute, batch_ns, flags, listed_bit)

    def record(self, p: Payments, minute: int) -> None:
        """Add payments ``p`` (in sequence order) to their payers' history at ``minute``."""
        if len(p.payer):
            g = _Grouped(p.payer)
            self._record(p, g, self._bits_of(p), self._aged(g.accounts, minute), minute)

    def rows_then_record(
        self, p: Payments, minute: int, batch_ns: int, flags: np.ndarray, listed_bit: int
    ) -> np.ndarray:
        """``rows`` then ``record`` of the same payments, grouping and ageing the payers once."""
        if len(p.payer) == 0:
            return np.zeros((0, N_FEATURES), dtype=np.int64)
        g = _Grouped(p.payer)
        bits = self._bits_of(p)
        aged = self._aged(g.accounts, minute)
        out = self._rows(p, g, bits, aged, minute, batch_ns, flags, listed_bit)
        self._record(p, g, bits, aged, minute)
        return out

    def _bits_of(self, p: Payments) -> tuple[np.ndarray, np.ndarray]:
        """Each payment's device and block sketch bits (read and recorded: computed once)."""
        return self.device_bit(p.device_id), self.block_bit(p.location_cell)

    def _rows(
        self,
        p: Payments,
        g: _Grouped,
        bits: tuple[np.ndarray, np.ndarray],
        aged: tuple[np.ndarray, ...],
        minute: int,
        batch_ns: int,
        flags: np.ndarray,
        listed_bit: int,
    ) -> np.ndarray:
        count_h, count_d, rest_d, amount_h, amount_d, dev_bits, blk_bits, last = (a[g.inverse] for a in aged)
        seen_devices = (dev_bits | (dev_bits >> 8)) & 0xFF
        seen_blocks = (blk_bits | (blk_bits >> 8)) & 0xFF
        has_history = last > 0
        log_amount = log2_q4(p.amount_fen)
        usual_fen = np.where(count_d > 0, amount_d * (800 * COUNT_ONE) // np.maximum(count_d, 1), 0)
        # Filled feature by feature, each a contiguous row of ``out``; returned transposed (a view).
        out = np.empty((N_FEATURES, len(p.payer)), dtype=np.int64)
        out[0] = count_h
        out[1] = count_d
        out[2] = amount_h
        out[3] = amount_d
        out[4] = rest_d * 1000 // np.maximum(count_d, 1)
        out[5] = _POPCOUNT[seen_devices]
        out[6] = (seen_devices >> bits[0]) & 1
        out[7] = has_history & (self.last_device[p.payer] == self.device_tag(p.device_id))
        out[8] = _POPCOUNT[seen_blocks]
        out[9] = (seen_blocks >> bits[1]) & 1
        out[10] = np.where(has_history, self.cells_apart(self.last_cell[p.payer].astype(np.int64), p.location_cell), 0)
        out[11] = np.where(has_history, np.minimum(minute - last, MINUTES_CAP), MINUTES_CAP)
        out[12] = log_amount
        out[13] = np.where(usual_fen > 0, log_amount - log2_q4(usual_fen), 0)
        # The ledger's account byte holds the wallet class (``engine.accounts``) and the flags:
        # one gather per side, no account-sized array.
        payer_bits, payee_bits = flags[p.payer], flags[p.payee]
        out[14] = class_of_bits(payer_bits)
        out[15] = class_of_bits(payee_bits)
        out[16] = (payer_bits & listed_bit) != 0
        out[17] = (payee_bits & listed_bit) != 0
        out[18] = p.category
        out[19] = ((batch_ns + CST_OFFSET_NS) // NS_PER_HOUR) % 24
        return out.T

    def _record(
        self, p: Payments, g: _Grouped, bits: tuple[np.ndarray, np.ndarray], aged: tuple[np.ndarray, ...], minute: int
    ) -> None:
        count_h, count_d, rest_d, amount_h, amount_d, dev_bits, blk_bits, _ = aged
        accounts, inverse, k = g.accounts, g.inverse, len(g.accounts)

        def add(base: np.ndarray, values: np.ndarray) -> np.ndarray:
            # Each value is clipped to the saturation bound first, so the float64 sum stays exact.
            summed = np.bincount(inverse, weights=np.minimum(values, _U16_MAX), minlength=k).astype(np.int64)
            return np.minimum(base + summed, _U16_MAX)

        # Payments per payer x COUNT_ONE: what ``add`` of COUNT_ONE per payment gives, without floats.
        counts = np.minimum(np.bincount(inverse, minlength=k) * COUNT_ONE, _U16_MAX)
        restricted = np.where(self.restricted[p.category], COUNT_ONE, 0)
        self.count_hour[accounts] = np.minimum(count_h + counts, _U16_MAX)
        self.count_day[accounts] = np.minimum(count_d + counts, _U16_MAX)
        self.restricted_day[accounts] = add(rest_d, restricted)
        self.amount_hour[accounts] = add(amount_h, p.amount_fen // 100)
        self.amount_day[accounts] = add(amount_d, p.amount_fen // 800)
        dev_bits, blk_bits = dev_bits.copy(), blk_bits.copy()
        np.bitwise_or.at(dev_bits, inverse, 1 << bits[0])
        np.bitwise_or.at(blk_bits, inverse, 1 << bits[1])
        self.device_bits[accounts] = dev_bits
        self.block_bits[accounts] = blk_bits
        self.last_device[accounts] = self.device_tag(p.device_id[g.last_row])
        self.last_cell[accounts] = p.location_cell[g.last_row]
        self.last_minute[accounts] = minute


#: Set bits of every byte value.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


class _Grouped:
    """The distinct payers of a batch (sorted), each payment's payer index, each payer's last payment.

    One stable sort gives all three: in it, a payer's payments keep their sequence order, so the
    last of each run is that payer's last payment of the batch.
    """

    def __init__(self, payer: np.ndarray) -> None:
        order = np.argsort(payer, kind="stable")
        ordered = payer[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        self.accounts = ordered[starts]
        run = np.zeros(len(payer), dtype=np.int64)
        run[starts[1:]] = 1
        self.inverse = np.empty(len(payer), dtype=np.int64)
        self.inverse[order] = np.cumsum(run)
        ends = np.concatenate((starts[1:], [len(payer)]))
        self.last_row = order[ends - 1]
