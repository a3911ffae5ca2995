"""Seeded per-account draws computed from (seed, account), so any chunking gives the same values.

A sequential random generator makes account k's value depend on how many draws came before it,
which ties the result to the chunk size and forbids filling chunks in parallel. Here a value is a
function of the key alone: a SplitMix64 hash (``engine.hashing``), turned into a standard normal
through a table of the normal's inverse CDF at 2**16 midpoints (the top 16 bits of the hash
select the entry; a draw is the quantile of its 1/65536-wide bin, plenty for synthetic balances
and scores, and a 512 KiB table that stays in cache).
"""

from __future__ import annotations

import statistics

import numpy as np

from engine.hashing import hash64

_NORMAL_BITS = 16
_NORMAL_SHIFT = np.uint64(64 - _NORMAL_BITS)


class NormalDraws:
    """Standard normal draws keyed by integers: ``draws(keys, salt)`` (float64)."""

    def __init__(self) -> None:
        q = (np.arange(1 << _NORMAL_BITS) + 0.5) / (1 << _NORMAL_BITS)
        normal = statistics.NormalDist()
        self._table = np.array([normal.inv_cdf(float(x)) for x in q])

    def __call__(self, keys: np.ndarray, salt_: int) -> np.ndarray:
        return self._table[hash64(keys, salt_) >> _NORMAL_SHIFT]
