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

With snapshots (``engine.snapshot``), ``choose_snapshot`` runs first, before the hooks attach: the
newest snapshot that passes every check (each chunk's CRC, the footer's, the build fields) is
chosen; each one refused is named, loudly, and the one before it tried. Then step 3 restores the
chosen snapshot into the ledger and hooks and replays only the journal entries after it (and,
for a durable consumer behind it such as the trove, re-feeds its output from the journal).

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
from engine.server.snapshots import state_owners
from engine.snapshot import PARTIAL, SnapshotDamaged, SnapshotMeta, list_snapshots, load_into, verify


@dataclass(slots=True)
class SnapshotChoice:
    """The snapshot recovery starts from (``path`` None: none usable) and what was refused on the way."""

    path: Path | None = None
    meta: SnapshotMeta | None = None
    refused: list[str] = field(default_factory=list)


def choose_snapshot(config: ServerConfig) -> SnapshotChoice:
    """The newest snapshot of ``config``'s journal that passes every check, newest first.

    Reads only (every chunk is checked, one chunk of memory at a time); called before the journal
    lock is taken, so that the hooks can be told to resume their outputs, and changes nothing.
    """
    choice = SnapshotChoice()
    if not journal_exists(config) or not config.snapshot_directory:
        return choice
    header = config.journal_header()
    for _, path in list_snapshots(config.snapshot_directory):
        try:
            meta = verify(path)
        except (SnapshotDamaged, OSError) as exc:
            choice.refused.append(f"SNAPSHOT REFUSED: {exc}; falling back to the previous snapshot")
            continue
        diff = meta.header.differences(header)
        if diff:
            choice.refused.append(
                f"SNAPSHOT REFUSED: {path} was taken by a server built differently ({'; '.join(diff)}); "
                "falling back to the previous snapshot"
            )
            continue
        choice.path, choice.meta = path, meta
        break
    return choice


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


def open_journal(
    config: ServerConfig,
    ledger: Ledger,
    *,
    log: Callable[[str], None] | None = None,
    snapshot: SnapshotChoice | None = None,
) -> OpenedJournal:
    """Lock, then create or replay ``config.journal`` into ``ledger``; open it for appending.

    ``snapshot`` (from ``choose_snapshot``, with the hooks attached as ``resuming``) is restored
    first and only the journal after it replayed. Raises ``JournalLocked``, ``JournalDamaged``,
    ``JournalMismatch`` or ``ValueError`` (header of another ledger, not a journal, snapshots of
    another journal) with the lock released and nothing served.
    """
    path = config.journal
    header = config.journal_header()
    lock = JournalLock(path)
    snapshot = snapshot or SnapshotChoice()
    try:
        notes: list[str] = list(snapshot.refused)
        for line in snapshot.refused:
            if log is not None:
                log(line)
        recovery = None
        t0 = time.perf_counter()
        snap_dir = Path(config.snapshot_directory) if config.snapshot_directory else None
        if snap_dir is not None and snap_dir.is_dir():
            for stale in snap_dir.glob(f"*{PARTIAL}-*"):  # a crash while writing one: never a snapshot
                stale.unlink(missing_ok=True)
        if not journal_exists(config):
            if snap_dir is not None and list_snapshots(snap_dir):
                raise ValueError(
                    f"journal {path} does not exist but {snap_dir} holds snapshots: they belong to another "
                    "journal. Remove them (or give the journal they belong to); nothing was started."
                )
            create(path, header)
            entries = 1
        else:

            def check(found: JournalHeader) -> None:
                refused = found.population_refusal(header, path)
                if refused:
                    raise ValueError(refused)
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

            after_seq = 0
            output_from = 0
            consumers: list[tuple[Hook, int]] = []
            if snapshot.path is not None and snapshot.meta is not None:
                load_into(snapshot.path, snapshot.meta, dict(state_owners(ledger)))
                after_seq = snapshot.meta.journal_seq
                consumers = [
                    (h, d) for h in ledger.hooks if (d := h.durable_journal_seq()) is not None and d < after_seq
                ]
                output_from = min((d + 1 for _, d in consumers), default=0)
                notes.append(f"restored snapshot {snapshot.path} (journal entry {after_seq})")

            def replay_output(seq: int, batch: np.ndarray, codes: np.ndarray) -> None:
                for hook, durable in consumers:
                    if seq > durable:
                        hook.note_journal_seq(seq)
                        hook.replay_output(seq, batch, codes)

            recovery = recover(
                path,
                apply_batch,
                apply_admin,
                check,
                repair=config.repair,
                log=log,
                note_seq=lambda seq: note_journal_seqs(ledger.hooks, seq),
                after_seq=after_seq,
                replay_output=replay_output if consumers else None,
                output_from=output_from,
            )
            entries = recovery.entries
            if recovery.version == 1:
                entries = upgrade_v1(path)
                notes.append(f"journal {path} upgraded from format 1 to format 2; the original is kept as {path}.v1")
        journal = Journal(path, config.fsync, entries=entries, segment_bytes=config.journal_segment_bytes)
        return OpenedJournal(journal, lock, recovery, time.perf_counter() - t0, notes)
    except BaseException:
        lock.release()
        raise
