"""Filling per-account arrays in chunks, on a few threads, with bounded temporaries.

Building 1.4 billion accounts' state in one numpy expression would allocate several temporaries
of 8 bytes per account (tens of GB). Instead every builder writes ``fill(start, stop)`` straight
into the final arrays, one chunk at a time: temporaries are a few arrays of ``chunk`` elements per
worker. numpy releases the GIL inside its loops, so two threads use both cores without copying
the arrays to other processes.

The values a chunk writes must depend only on the account ids (counter-based draws,
``engine.draws``), never on the chunk's size or order: then any chunk size and any number of
workers give the same bytes (tests check it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

import numpy as np

#: Accounts per chunk: a few arrays of 1M elements (8 MB each) per worker stay in L2/L3-friendly sizes.
DEFAULT_CHUNK = 1 << 20
#: Worker threads (the machine this benchmark targets has 2 cores).
DEFAULT_WORKERS = 2

#: ``progress(done, total)``: called from the building thread after each chunk (in order of completion).
Progress = Callable[[int, int], None]


def fill_in_chunks(
    length: int,
    fill: Callable[[int, int], None],
    *,
    chunk: int = DEFAULT_CHUNK,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> None:
    """Call ``fill(start, stop)`` over ``0..length`` in chunks, on ``workers`` threads."""
    if chunk < 1 or workers < 1:
        raise ValueError(f"chunk and workers must be >= 1, got {chunk} and {workers}")
    bounds = [(lo, min(lo + chunk, length)) for lo in range(0, length, chunk)]
    if workers == 1 or len(bounds) <= 1:
        done = 0
        for lo, hi in bounds:
            fill(lo, hi)
            done += hi - lo
            if progress is not None:
                progress(done, length)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fill") as pool:
        done = 0
        # map() yields in order; a worker's exception is raised here, in the caller's thread.
        for size in pool.map(lambda b: _fill_one(fill, b), bounds):
            done += size
            if progress is not None:
                progress(done, length)


def _fill_one(fill: Callable[[int, int], None], bounds: tuple[int, int]) -> int:
    fill(*bounds)
    return bounds[1] - bounds[0]


def count_where(column: np.ndarray, test: Callable[[np.ndarray], np.ndarray], *, chunk: int = DEFAULT_CHUNK) -> int:
    """How many elements of ``column`` pass ``test`` (a vectorised predicate), one chunk at a time.

    ``np.count_nonzero(test(column))`` would first build a boolean array as long as the column
    (1.4 GB at 1.4 billion accounts).
    """
    return sum(int(np.count_nonzero(test(column[lo : lo + chunk]))) for lo in range(0, len(column), chunk))


class TtyProgress:
    """A one-line progress report on stderr, redrawn at most twice a second (only on a TTY)."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._started = time.monotonic()
        self._drawn = 0.0

    @classmethod
    def if_tty(cls, label: str) -> TtyProgress | None:
        """A progress line for ``label`` when stderr is a terminal, else None (logs stay clean)."""
        return cls(label) if sys.stderr.isatty() else None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._drawn < 0.5:
            return
        self._drawn = now
        end = "\n" if done >= total else ""
        share = done / max(total, 1)
        self.stream.write(f"\r{self.label}: {done:,} of {total:,} ({share:.0%}, {now - self._started:.0f} s){end}")
        self.stream.flush()
