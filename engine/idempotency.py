"""Per-operator idempotency: a sliding window of seen transfer ids with bounded memory.

Each operator numbers its transfers (any order, ideally increasing). For each operator the ledger
keeps ``high`` (the largest id seen) and a ring of ``window`` booleans: slot ``id % window`` says
whether ``id`` was consumed, valid for ids in ``(high - window, high]``. An id at or below
``high - window`` cannot be proven new and gets STALE_ID. Memory: ``window`` bytes per operator
that has submitted at least once (1 MiB at the default window of 2**20 ids), never growing.

The total is bounded too (issue 13: 1 MiB for each of up to 65,536 operators was 64 GiB): the
window is ``min(requested, total_window_bytes // operators)`` ids, so all operators' rings
together never exceed ``total_window_bytes`` (256 MiB by default). Up to 256 operators keep the
full 2**20 ids; 65,536 operators get 4,096 each. The window depends only on the number of
operators, which the journal header records, so replay judges ids by the same window.

An id is consumed by the first transfer that carries it past the id checks, whatever that
transfer's final result: a retry of a transfer that failed for insufficient funds is a
DUPLICATE, so a client can never apply one intent twice by retrying it.

An id more than ``MAX_ID_AHEAD`` above the operator's highest consumed id gets ID_OUT_OF_RANGE
and is not consumed (``engine.records``): one stray id can no longer block its own operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.codes import CODE_DTYPE, ResultCode
from engine.records import MAX_ID_AHEAD

DEFAULT_WINDOW = 1 << 20
#: Most bytes all operators' rings may hold together (one byte per id of the window).
DEFAULT_TOTAL_WINDOW_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class _Consumed:
    operator: int
    new_high: int
    ids: np.ndarray


class IdWindow:
    """Sliding-window duplicate detection for up to ``operators`` operators."""

    def __init__(
        self, operators: int, window: int = DEFAULT_WINDOW, total_window_bytes: int = DEFAULT_TOTAL_WINDOW_BYTES
    ) -> None:
        if window < 1:
            raise ValueError(f"id window must be >= 1, got {window}")
        if total_window_bytes < operators:
            raise ValueError(f"total_window_bytes ({total_window_bytes}) must allow one id per operator ({operators})")
        self.window = min(window, total_window_bytes // max(operators, 1))
        self.total_window_bytes = total_window_bytes
        self.high = np.full(operators, -1, dtype=np.int64)
        self._seen: dict[int, np.ndarray] = {}

    def seen_rings(self) -> dict[int, np.ndarray]:
        """Each operator's ring (operators that have submitted), for snapshots."""
        return dict(self._seen)

    def allocate(self, operators: list[int]) -> None:
        """Rings for exactly ``operators`` (cleared), before a snapshot's rings are read into them."""
        self._seen = {op: np.zeros(self.window, dtype=bool) for op in operators}

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._seen.values()) + self.high.nbytes

    def check(
        self, operator: np.ndarray, transfer_id: np.ndarray, eligible: np.ndarray
    ) -> tuple[np.ndarray, list[_Consumed]]:
        """Codes (DUPLICATE, STALE_ID or OK) for eligible transfers, and what to commit.

        Exact sequential semantics: the window a transfer is judged by ends at the largest id
        of that operator before it, including earlier transfers of the same batch.
        """
        codes = np.zeros(len(transfer_id), dtype=CODE_DTYPE)
        plan: list[_Consumed] = []
        ops = operator[eligible]
        if ops.size == 0:
            return codes, plan
        first = int(ops[0])
        single = bool((ops == first).all())
        for op in (first,) if single else np.unique(ops).tolist():
            where = np.flatnonzero(eligible & (operator == op)) if not single or not eligible.all() else None
            ids = transfer_id if where is None else transfer_id[where]
            op_codes, consumed = self._check_one(op, ids)
            if where is None:
                codes = op_codes
            else:
                codes[where] = op_codes
            taken = ids[consumed]
            plan.append(_Consumed(op, max(int(self.high[op]), int(taken.max()) if len(taken) else -1), taken))
        return codes, plan

    def _check_one(self, op: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h0 = int(self.high[op])
        codes = np.zeros(len(ids), dtype=CODE_DTYPE)
        # Fast path: the usual stream of fresh, strictly increasing ids, none too far ahead.
        if 0 < ids[0] - h0 <= MAX_ID_AHEAD and (
            len(ids) == 1 or bool(((ids[1:] > ids[:-1]) & (ids[1:] - ids[:-1] <= MAX_ID_AHEAD)).all())
        ):
            return codes, np.ones(len(ids), dtype=bool)
        ahead = self._too_far_ahead(h0, ids)
        kept = np.where(ahead, h0, ids)  # an id too far ahead is not consumed: it moves no window
        running = np.maximum.accumulate(kept)
        high_before = np.empty_like(ids)
        high_before[0] = h0
        np.maximum(running[:-1], h0, out=high_before[1:])
        stale = (ids <= high_before - self.window) & ~ahead
        dup = np.zeros(len(ids), dtype=bool)
        seen = self._seen.get(op)
        if seen is not None:
            dup |= (ids <= h0) & seen[ids % self.window]
        _, first_index = np.unique(ids, return_index=True)
        repeated = np.ones(len(ids), dtype=bool)
        repeated[first_index] = False
        dup |= repeated
        dup &= ~(stale | ahead)
        codes[stale] = ResultCode.STALE_ID
        codes[dup] = ResultCode.DUPLICATE
        codes[ahead] = ResultCode.ID_OUT_OF_RANGE
        return codes, ~(stale | dup | ahead)

    @staticmethod
    def _too_far_ahead(h0: int, ids: np.ndarray) -> np.ndarray:
        """Ids more than MAX_ID_AHEAD above the highest id consumed before them (sequentially)."""
        naive = np.maximum(np.maximum.accumulate(ids), h0)
        if not bool((ids[1:] > naive[:-1] + MAX_ID_AHEAD).any()) and ids[0] <= h0 + MAX_ID_AHEAD:
            return np.zeros(len(ids), dtype=bool)
        out = np.zeros(len(ids), dtype=bool)
        high = h0
        for i, tid in enumerate(ids.tolist()):  # rare: only a batch holding such a jump gets here
            if tid > high + MAX_ID_AHEAD:
                out[i] = True
            elif tid > high:
                high = tid
        return out

    def commit(self, plan: list[_Consumed]) -> None:
        """Record the consumed ids of a batch that was applied."""
        w = self.window
        for c in plan:
            seen = self._seen.get(c.operator)
            if seen is None:
                seen = self._seen[c.operator] = np.zeros(w, dtype=bool)
            h0 = int(self.high[c.operator])
            if c.new_high > h0:
                # Slots of ids (h0, new_high] held ids that have now left the window.
                if c.new_high - h0 >= w:
                    seen[:] = False
                else:
                    lo, hi = (h0 + 1) % w, (c.new_high + 1) % w
                    if lo < hi:
                        seen[lo:hi] = False
                    else:
                        seen[lo:] = False
                        seen[:hi] = False
                self.high[c.operator] = c.new_high
            keep = c.ids[c.ids > c.new_high - w]
            seen[keep % w] = True
