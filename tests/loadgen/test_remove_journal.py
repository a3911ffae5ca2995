"""A run's or a compare server's own journal is deleted whole: file, segments, snapshots, lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.journal import segment_path
from loadgen.harness.measured import remove_journal


@pytest.mark.parametrize("keep", [False, True])
def test_the_whole_journal_goes_unless_kept_and_its_lock_always(tmp_path: Path, keep: bool) -> None:
    journal = tmp_path / "j.cbj"
    journal.write_bytes(b"header")
    segments = [segment_path(journal, seq) for seq in (1_000, 2_000)]
    for seg in segments:
        seg.write_bytes(b"entries")
    snapshots = tmp_path / "j.cbj.snapshots"
    snapshots.mkdir()
    (snapshots / "snap-1").write_bytes(b"state")
    lock = tmp_path / "j.cbj.lock"
    lock.write_bytes(b"")
    other = tmp_path / "other.cbj"  # another server's journal beside it stays
    other.write_bytes(b"header")
    remove_journal(journal, keep=keep)
    assert not lock.exists() and other.exists()
    kept = [journal, *segments, snapshots]
    assert all(p.exists() == keep for p in kept)
