"""Start from the journal: replay an existing one into the fresh ledger, then open it for appending.

See ``engine.server`` ("Durability") and ``engine.journal``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.hooks.base import Hook
from engine.journal import AdminEntry, Journal, JournalHeader, Recovery, recover
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


def open_journal(config: ServerConfig, ledger: Ledger) -> tuple[Journal, Recovery | None, float]:
    """Replay an existing journal into the new ledger, then open it for appending.

    Returns the journal, what recovery replayed (None for a new journal) and its seconds.
    """
    path = config.journal
    header = config.journal_header()
    t0 = time.perf_counter()

    def check(found: JournalHeader) -> None:
        diff = found.differences(header)
        if diff:
            raise ValueError(
                f"journal {path} was written by a server built differently ({'; '.join(diff)}); "
                "restart with the options that wrote it, or use a new journal path. Nothing was replayed."
            )

    def apply_batch(batch: np.ndarray) -> np.ndarray:
        codes = ledger.apply(batch)
        ledger.run_deferred()  # as the live server does after each batch's replies
        return codes

    def apply_admin(entry: AdminEntry) -> None:
        replay_admin(ledger, entry)

    entries = 0
    recovery: Recovery | None = None
    recovery_s = 0.0
    if journal_exists(config):
        recovery = recover(path, apply_batch, apply_admin, check)
        entries = recovery.entries
        recovery_s = time.perf_counter() - t0
    journal = Journal(path, config.fsync, entries=entries)
    if entries == 0:
        journal.append_header(header)
    return journal, recovery, recovery_s
