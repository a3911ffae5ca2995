"""Start from the journal: lock it, create it or replay it into the new ledger, upgrade it.

The server calls ``open_journal`` once, before it listens; everything it needs to know comes back
in ``OpenedJournal`` (the journal to append to, what recovery did, the lock to release, notes for
the operator). Kept apart from the server so that the order of these steps, which is what makes
a restart safe, is in one short function:

1. ``JournalLock``: a second server on the same journal refuses before reading a byte of it.
2. A new (or empty) journal is created with its header, durably (``engine.journal.create``).
3. An existing one is replayed (``engine.journal.recover``): its header must match this server,
   its batches must give the recorded codes at the recorded sequencer clock, damage before its
   tail refuses the start (unless ``repair="truncate"``).
4. A format 1 journal is rewritten as format 2 (``upgrade_v1``, the original kept as ``J.v1``).

See ``engine.server`` ("Durability") and ``engine.journal``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.hooks.base import Hook, note_journal_seqs
from engine.journal import (
    AdminEntry,
    Journal,
    JournalHeader,
    JournalLock,
    JournalMismatch,
    Recovery,
    create,
    recover,
    upgrade_v1,
)
from engine.ledger import Ledger
from engine.server.admin import replay_admin
from engine.server.config import ServerConfig


def journal_exists(config: ServerConfig) -> bool:
    """Whether start-up will replay a journal (it exists and is not empty)."""
    return bool(config.journal) and os.path.exists(config.journal) and os.path.getsize(config.journal) > 0


def set_aside_outputs(hooks: Sequence[Hook]) -> list[tuple[Path, Path]]:
    """Before a recovery: move the hooks' output files aside; the replay writes them again.

    They hold what the hooks observed before the crash, possibly missing the last batches
    (observers run after the replies) and about to be written again by the replay; the
    regenerated files are complete and in step with the recovered hook state. Returns the
    (file, where it went) pairs.
    """
    moved = []
    for hook in hooks:
        for path in hook.output_files():
            if path.exists() and path.stat().st_size > 0:
                aside = path.with_name(path.name + ".before-recovery")
                n = 1
                while aside.exists():
                    n += 1
                    aside = path.with_name(f"{path.name}.before-recovery.{n}")
                path.rename(aside)
                moved.append((path, aside))
    return moved


@dataclass(slots=True)
class OpenedJournal:
    journal: Journal
    lock: JournalLock
    recovery: Recovery | None
    seconds: float
    notes: list[str] = field(default_factory=list)


def open_journal(config: ServerConfig, ledger: Ledger, *, log: Callable[[str], None] | None = None) -> OpenedJournal:
    """Lock, then create or replay ``config.journal`` into ``ledger``; open it for appending.

    Raises ``JournalLocked``, ``JournalDamaged``, ``JournalMismatch`` or ``ValueError`` (header of
    another ledger, not a journal) with the lock released and nothing served.
    """
    path = config.journal
    header = config.journal_header()
    lock = JournalLock(path)
    try:
        notes: list[str] = []
        recovery = None
        t0 = time.perf_counter()
        if not journal_exists(config):
            create(path, header)
            entries = 1
        else:

            def check(found: JournalHeader) -> None:
                diff = found.differences(header)
                if diff:
                    raise ValueError(
                        f"journal {path} was written by a server built differently ({'; '.join(diff)}); "
                        "restart with the options that wrote it, or use a new journal path. Nothing was replayed."
                    )
                if found.clock_payments_per_day == 0:  # format 1: days from client timestamps
                    ledger.clock.payments_per_day = 0
                    notes.append(
                        f"journal {path} was started by format 1: its daily-cap days follow client timestamps "
                        "(one operator can set them for everyone); start a new journal for the sequencer's clock"
                    )

            def apply_batch(batch: np.ndarray, clock: int) -> np.ndarray:
                if clock >= 0 and clock != ledger.clock.payments:
                    raise JournalMismatch(
                        f"{path}: a batch was journalled at sequencer clock {clock}, replay reached it at "
                        f"{ledger.clock.payments}; the journal does not match this server's ledger"
                    )
                codes = ledger.apply(batch)
                ledger.run_deferred()  # as the live server does after each batch's replies
                return codes

            def apply_admin(entry: AdminEntry) -> None:
                replay_admin(ledger, entry)

            recovery = recover(
                path,
                apply_batch,
                apply_admin,
                check,
                repair=config.repair,
                log=log,
                note_seq=lambda seq: note_journal_seqs(ledger.hooks, seq),
            )
            entries = recovery.entries
            if recovery.version == 1:
                entries = upgrade_v1(path)
                notes.append(f"journal {path} upgraded from format 1 to format 2; the original is kept as {path}.v1")
        journal = Journal(path, config.fsync, entries=entries)
        return OpenedJournal(journal, lock, recovery, time.perf_counter() - t0, notes)
    except BaseException:
        lock.release()
        raise
