"""The fixed-size transfer record and money limits.

A transfer is one 48-byte little-endian record, the same layout in memory, on the wire (inside a
msgpack binary field) and in journals, so ``np.frombuffer`` turns a received frame into a batch
without a copy. Fields are ordered largest first so every field is naturally aligned.
"""

from __future__ import annotations

import numpy as np

TRANSFER_DTYPE = np.dtype(
    [
        ("transfer_id", "<i8"),  # per-operator idempotency key, >= 0
        ("timestamp_ns", "<i8"),  # when the payment was made (unix ns); for loadgen, its schedule
        ("amount_fen", "<i8"),  # minor units (1 yuan = 100 fen); must be in 1..MAX_TRANSFER_FEN
        ("device_id", "<u8"),  # surveillance metadata: the paying device
        ("payer", "<u4"),  # account ids are dense 0..N-1; u4 covers 1.4 billion residents
        ("payee", "<u4"),
        ("location_cell", "<u4"),  # surveillance metadata: coarse location cell
        ("operator", "<u2"),  # the authorised operator (commercial bank) that submitted it
        ("category", "<u2"),  # merchant category, see engine.categories
    ]
)
assert TRANSFER_DTYPE.itemsize == 48
#: An Ed25519 signature over one record (signed operation, ``engine.signing``): 64 bytes, carried
#: beside the records, never inside them, so unsigned records keep their layout.
SIGNATURE_BYTES = 64

#: Largest single transfer: one trillion yuan. With total supply capped at MAX_SUPPLY_FEN this
#: keeps every intermediate balance far from int64 overflow.
MAX_TRANSFER_FEN = 10**14
#: Largest valid transfer id: ids are 0..2**62-1 (issue 13). The headroom below int64's maximum
#: keeps ``id + 1`` (Welcome.next_transfer_id) and ``id + window`` (the idempotency window) from
#: overflowing; an id above it gets ID_OUT_OF_RANGE and is not consumed.
MAX_TRANSFER_ID = (1 << 62) - 1
#: Furthest an id may run ahead of its operator's highest consumed id (or of -1, before the first).
#: Without it one id near MAX_TRANSFER_ID (a typo, a bug) moved the window to the top of the range
#: and blocked its own operator: every later id was stale or out of range (issue 13). An id
#: further ahead gets ID_OUT_OF_RANGE and is not consumed; reaching the top now takes at least
#: 2**30 accepted transfers that each jump the whole 2**32 (about an hour of a 300,000/s server
#: spent on nothing else), never one bad id. Clients number their transfers from
#: ``Welcome.next_transfer_id`` upwards, so gaps far below this are what they produce.
MAX_ID_AHEAD = 1 << 32
#: Cap on the money in a ledger (about 4.6e16 yuan); balance + amount can then never overflow int64.
MAX_SUPPLY_FEN = 2**62
#: Largest batch the ledger applies: with MAX_SUPPLY_FEN, a balance plus every credit of a batch
#: (<= MAX_BATCH * MAX_TRANSFER_FEN, about 3.3e18) stays below the int64 limit (about 9.2e18).
MAX_BATCH = 1 << 15


def empty_batch(n: int) -> np.ndarray:
    """A zeroed batch of ``n`` transfer records."""
    return np.zeros(n, dtype=TRANSFER_DTYPE)


def make_batch(
    payer: object,
    payee: object,
    amount_fen: object,
    *,
    transfer_id: object | None = None,
    operator: object = 0,
    category: object = 0,
    timestamp_ns: object = 0,
    location_cell: object = 0,
    device_id: object = 0,
) -> np.ndarray:
    """Build a batch from columns (sequences or scalars); ids default to 0..n-1."""
    payer_arr = np.asarray(payer)
    batch = empty_batch(payer_arr.shape[0] if payer_arr.ndim else 1)
    batch["payer"] = payer_arr
    batch["payee"] = payee
    batch["amount_fen"] = amount_fen
    batch["transfer_id"] = np.arange(len(batch)) if transfer_id is None else transfer_id
    batch["operator"] = operator
    batch["category"] = category
    batch["timestamp_ns"] = timestamp_ns
    batch["location_cell"] = location_cell
    batch["device_id"] = device_id
    return batch
