"""Start-up progress of a server: which phase it is in and how far, before it listens.

A server with 10^8 accounts spends tens of seconds (1.4e9: minutes) drawing its population and
its hooks' state before it listens, so a client cannot ask it how far it is. The server reports
``BuildStep`` events to a callback instead; ``cbdc-bench serve`` draws them as a bar on a
terminal or writes them as JSON lines on stdout (``--progress json``) for the ``run`` that started
it, which draws the bar (``loadgen.generator.progress_build``). The engine only emits events: how
they are shown is the load tool's business.

Phases, in order (a phase that does not apply is skipped):

* ``accounts``: the seeded population's state, ``done`` of ``total`` accounts (one event per
  chunk of ``engine.chunks``, in order of completion);
* ``hooks``: each hook's per-account state, ``done`` of ``total`` hooks attached, ``detail``
  naming the hook being attached;
* ``key registry`` (signed profiles) and ``journal`` (replay on restart): sizes not known in
  advance, so ``total`` is 0 until the phase ends with ``done == total == 1``.

Every phase ends with an event whose ``done`` equals its ``total`` (and is at least 1), so a
reader sees each phase complete. The last step is ``ready`` (1 of 1): the server is bound, and
its ``listening on`` line follows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import msgspec

PHASE_ACCOUNTS = "accounts"
PHASE_HOOKS = "hooks"
PHASE_KEYS = "key registry"
PHASE_JOURNAL = "journal"
#: The last step: built and bound, the ``listening on`` line follows.
PHASE_READY = "ready"


class BuildStep(msgspec.Struct, frozen=True, omit_defaults=True, tag="build_step", tag_field="event"):
    """``done`` of ``total`` units of ``phase`` are built (``total`` 0: the size is not known yet)."""

    phase: str
    done: int
    total: int
    unit: str = ""
    detail: str = ""

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total


#: Receives each step; called from the building thread.
BuildProgress = Callable[[BuildStep], None]


def chunk_progress(progress: BuildProgress | None, phase: str, unit: str) -> Callable[[int, int], None] | None:
    """An ``engine.chunks.Progress`` (done, total) that reports ``phase`` steps to ``progress``."""
    if progress is None:
        return None
    return lambda done, total: progress(BuildStep(phase, done, total, unit))


@contextlib.contextmanager
def unsized_phase(progress: BuildProgress | None, phase: str, detail: str = "") -> Iterator[None]:
    """Report a phase of unknown size: started (0 of 0) on entry, finished (1 of 1) on a normal exit."""
    if progress is not None:
        progress(BuildStep(phase, 0, 0, detail=detail))
    yield
    if progress is not None:
        progress(BuildStep(phase, 1, 1, detail=detail))
