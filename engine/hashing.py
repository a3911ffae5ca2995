"""Counter-based hashing over numpy uint64 arrays: attributes derived, not stored.

A person's home, devices and habits, and whether a transfer id carries a planted behaviour, are
pure functions of (seed, key) computed on demand, so no process keeps a per-account array for
them (1.4 billion accounts would not fit) and every process and every chunking of the same
accounts agrees byte for byte.

* ``hash64(keys, salt)`` is SplitMix64's output function applied to ``salt + (key + 1) * GAMMA``:
  the ``key``-th output of a SplitMix64 stream seeded with ``salt``. SplitMix64 passes BigCrush
  with sequential counters (Steele, Lea & Flood, OOPSLA 2014). For a fixed salt it is a
  bijection of uint64, so distinct keys never collide (device ids rely on this).
* ``SeededPermutation`` is a keyed permutation of ``0..n-1`` (a 4-round Feistel network on the
  next even number of bits, with cycle walking), invertible in O(1) per element. A seeded
  selection of ``k`` accounts is ``{P(0), ..., P(k-1)}``: membership is ``P^-1(a) < k`` and a
  uniform member is ``P(uniform integer < k)``, with nothing stored.

numpy's uint64 arithmetic wraps modulo 2**64 on arrays (no warning), which is what the mixers
need; scalars are kept as Python ints masked to 64 bits so that numpy scalars never overflow.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
#: 1 / 2**53: turns the top 53 bits of a hash into a float64 in [0, 1).
_INV_2_53 = 1.0 / (1 << 53)
# numpy scalars built once (immutable): building one costs about as much as a small array op.
_S11, _S27, _S30, _S31, _S32 = (np.uint64(k) for k in (11, 27, 30, 31, 32))
_GAMMA, _MUL1, _MUL2 = np.uint64(GAMMA), np.uint64(_M1), np.uint64(_M2)


def _mix_int(x: int) -> int:
    """SplitMix64's finaliser on one Python int (for salts)."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * _M1) & MASK64
    x = ((x ^ (x >> 27)) * _M2) & MASK64
    return x ^ (x >> 31)


def salt(seed: int, purpose: int) -> int:
    """A 64-bit salt for one (seed, purpose) pair: independent hash families per attribute."""
    return _mix_int(_mix_int(seed) ^ ((purpose * GAMMA) & MASK64))


def hash64(keys: np.ndarray, salt_: int) -> np.ndarray:
    """SplitMix64 output number ``key`` of the stream seeded with ``salt_`` (uint64 array)."""
    x = keys.astype(np.uint64)
    x *= _GAMMA
    x += np.uint64((salt_ + GAMMA) & MASK64)  # (key + 1) * GAMMA + salt, one pass fewer
    x ^= x >> _S30
    x *= _MUL1
    x ^= x >> _S27
    x *= _MUL2
    x ^= x >> _S31
    return x


def unit(h: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) from the top 53 bits of hashes ``h``."""
    return (h >> _S11).astype(np.float64) * _INV_2_53


def below(h: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """Integers in ``0..n-1`` from hashes ``h`` (top 32 bits scaled; ``n`` < 2**32): int64."""
    return ((h >> _S32) * np.asarray(n, dtype=np.uint64) >> _S32).astype(np.int64)


class SeededPermutation:
    """A keyed permutation of ``0..n-1`` and its inverse, both vectorised and O(1) per element."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int) -> None:
        if not 1 <= n < 1 << 62:
            raise ValueError(f"permutation size must be in 1..2**62-1, got {n}")
        self.n = n
        self._half = max(1, ((n - 1).bit_length() + 1) // 2)
        self._mask = np.uint64((1 << self._half) - 1)
        self._salts = [salt(seed, 0x5045_524D + r) for r in range(self.ROUNDS)]

    def _rounds(self, x: np.ndarray, order: list[int], inverse: bool) -> np.ndarray:
        h = np.uint64(self._half)
        left, right = x >> h, x & self._mask
        for r in order:
            if inverse:  # undo (L, R) -> (R, L ^ F(R))
                left, right = right ^ (hash64(left, self._salts[r]) & self._mask), left
            else:
                left, right = right, left ^ (hash64(right, self._salts[r]) & self._mask)
        return (left << h) | right

    def _walk(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        order = list(range(self.ROUNDS))[::-1] if inverse else list(range(self.ROUNDS))
        out = self._rounds(x.astype(np.uint64), order, inverse)
        # Cycle walking: values that land outside 0..n-1 are permuted again until they return.
        todo = np.flatnonzero(out >= np.uint64(self.n))
        while len(todo):
            out[todo] = self._rounds(out[todo], order, inverse)
            todo = todo[out[todo] >= np.uint64(self.n)]
        return out.astype(np.int64)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """P(x) for integers ``x`` in ``0..n-1`` (int64)."""
        return self._walk(np.asarray(x), inverse=False)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """P^-1(y) for integers ``y`` in ``0..n-1`` (int64)."""
        return self._walk(np.asarray(y), inverse=True)


class SeededSelection:
    """Exactly ``round(fraction * n)`` of ``0..n-1``, chosen by a seeded permutation, stored nowhere.

    The blacklist and freeze hooks set their flag bits from it, and the workload draws listed
    accounts from it: both sides agree on who is listed without sharing an array.
    """

    def __init__(self, n: int, fraction: float, seed: int) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"selected fraction must be in [0, 1], got {fraction}")
        self.count = round(fraction * n)
        self._perm = SeededPermutation(n, seed)

    def member(self, index: np.ndarray) -> np.ndarray:
        """The ``index``-th selected account, for ``index`` in ``0..count-1`` (int64)."""
        return self._perm.forward(index)

    def contains(self, accounts: np.ndarray) -> np.ndarray:
        """Whether each of ``accounts`` is selected (bool)."""
        return self._perm.inverse(accounts) < self.count
