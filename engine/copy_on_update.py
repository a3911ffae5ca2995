"""Application-level copy-on-update: a snapshot written from live arrays while the sequencer runs.

A forked child (``engine.server.snapshots``, method ``fork``) stalls the sequencer for the page
tables' copy (tens of ms at 10^8 accounts) and may grow memory towards a second copy of the
state while it writes. This is the other way (the "copy-on-update" family of Cao et al., SIGMOD
2011), with memory bounded by the updates made while the snapshot is written, not by the state:

* At capture (on the sequencer, between batches) the scalars are copied, and so are the arrays
  that are not per-account (idempotency rings, counters, aggregates: small). Per-account arrays
  (one element per account) are *tracked*: nothing is copied yet.
* Tracked arrays are handed to the writer thread chunk by chunk, in write order: the sequencer
  copies the next chunks (``feed``, a few MiB at a time, between batches) into a bounded queue;
  the writer thread checksums and writes them (zlib and os.write release the GIL).
* Before the sequencer modifies accounts (``before_update``, with the accounts a batch or admin
  operation touches: payers and payees), it saves their current values in the chunks not yet
  copied: an undo log. When a chunk is copied, the saved values in it are put back, oldest last,
  so the chunk holds the values as of the capture. Chunk-level copying would not do: a batch of
  8,192 uniformly random transfers touches almost every 4 MiB chunk of a 10^9-account column;
  the undo log costs 8 bytes of index plus the value per touched account instead.

The rule a hook must keep: it modifies per-account arrays only at the accounts of the batch (or
admin operation) at hand, or says beforehand that it will touch all of them
(``Hook.snapshot_touches_all``, e.g. the daily rollover of wallet_limits), in which case the rest
of its arrays is saved whole. Hooks that cannot promise this use the fork method.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.snapshot import Part


@dataclass(slots=True)
class _Tracked:
    """One per-account array: how far it has been copied, and the values saved before updates."""

    array: np.ndarray
    copied_upto: int = 0  # elements before this index have been copied (in chunk order)
    #: (indices, old values), oldest first; indices may be an int: a contiguous run starting there.
    undo: list[tuple[np.ndarray | int, np.ndarray]] = field(default_factory=list)


class CopyOnUpdate:
    """The state of one snapshot being written from live arrays (see the module docstring).

    ``parts`` are the captured parts (live arrays); ``per_account`` names the (owner, array) pairs
    indexed by account (``per_account_arrays()`` of the ledger and the hooks). ``parts`` then holds
    copies of the other arrays, and ``read_chunk`` is the writer's source.
    """

    def __init__(
        self,
        parts: Sequence[Part],
        per_account: set[tuple[str, str]],
        chunk_bytes: int,
        *,
        queue_chunks: int = 8,
    ) -> None:
        self.tracked: dict[tuple[str, str], _Tracked] = {}
        self.plan: list[tuple[tuple[str, str], int, int]] = []  # (array, first element, end element)
        self.parts: list[Part] = []
        self.copied_bytes = 0
        for part in parts:
            arrays = {}
            for name, array in part.arrays.items():
                if (part.owner, name) in per_account and array.ndim == 1 and chunk_bytes % array.itemsize == 0:
                    self.tracked[(part.owner, name)] = _Tracked(array)
                    per = chunk_bytes // array.itemsize
                    self.plan += [
                        ((part.owner, name), lo, min(lo + per, len(array))) for lo in range(0, len(array), per)
                    ]
                    arrays[name] = array
                else:
                    arrays[name] = array.copy()
                    self.copied_bytes += array.nbytes
            self.parts.append(Part(part.owner, arrays, part.scalars))
        self._next = 0
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=queue_chunks)
        self.undo_bytes = 0
        self.undo_bytes_max = 0

    @property
    def copied_all(self) -> bool:
        return self._next >= len(self.plan)

    def before_update(self, accounts: np.ndarray | None, owners: frozenset[str] | None = None) -> None:
        """Save the values of ``accounts`` (unique; None = every account) not yet copied,
        in the arrays of ``owners`` (None = every tracked array). Call before modifying them."""
        for (owner, _), t in self.tracked.items():
            if t.copied_upto >= len(t.array) or (owners is not None and owner not in owners):
                continue
            if accounts is None:  # the rest of the array, as one run (no index array the size of it)
                old = t.array[t.copied_upto :].copy()
                t.undo.append((t.copied_upto, old))
                self.undo_bytes += old.nbytes
                continue
            idx = accounts[(accounts >= t.copied_upto) & (accounts < len(t.array))]
            if len(idx):
                t.undo.append((idx, t.array[idx]))  # fancy indexing copies
                self.undo_bytes += idx.nbytes + idx.size * t.array.itemsize
        self.undo_bytes_max = max(self.undo_bytes_max, self.undo_bytes)

    def feed(self, max_chunks: int) -> int:
        """Copy up to ``max_chunks`` next chunks (as of the capture) into the writer's queue, while
        it has room; on the sequencer, between batches. Returns the chunks copied."""
        done = 0
        while done < max_chunks and self._next < len(self.plan) and not self._queue.full():
            key, lo, hi = self.plan[self._next]
            t = self.tracked[key]
            chunk = t.array[lo:hi].copy()
            kept: list[tuple[np.ndarray | int, np.ndarray]] = []
            for idx, old in reversed(t.undo):  # newest first, so the oldest saved value wins
                if isinstance(idx, int):  # a run: old[k] was the value of element idx + k
                    a, b = max(lo, idx), min(hi, idx + len(old))
                    if a < b:
                        chunk[a - lo : b - lo] = old[a - idx : b - idx]
                    if idx + len(old) > hi:
                        start = max(idx, hi)
                        kept.append((start, old[start - idx :]))
                    continue
                inside = (idx >= lo) & (idx < hi)
                chunk[idx[inside] - lo] = old[inside]
                if not inside.all():
                    kept.append((idx[~inside], old[~inside]))
            t.undo = kept[::-1]
            self.undo_bytes = sum(
                (0 if isinstance(i, int) else i.nbytes) + v.nbytes for tr in self.tracked.values() for i, v in tr.undo
            )
            t.copied_upto = hi
            self._queue.put_nowait(chunk.view(np.uint8))
            self._next += 1
            done += 1
        return done

    def read_chunk(self, owner: str, name: str, lo: int, hi: int) -> np.ndarray:
        """The writer thread's source: tracked arrays from the queue, in order; copies otherwise."""
        if (owner, name) in self.tracked:
            chunk = self._queue.get()
            if chunk.size != hi - lo:
                raise RuntimeError(f"copy-on-update: {owner}.{name} bytes {lo}..{hi} out of order")
            return chunk
        for part in self.parts:
            if part.owner == owner:
                return part.arrays[name].reshape(-1).view(np.uint8)[lo:hi]
        raise KeyError(owner)
