"""A server's start-up progress (``engine.build_progress``) on a terminal, and on the pipe to its parent.

``run`` starts ``cbdc-bench serve --progress json``: the server writes one ``BuildStep`` per line
on stdout before its ``listening on`` line (it is not listening yet, so there is nothing to ask),
``loadgen.harness.server.ServerProcess`` reads them (``parse_step``) and hands them to a
``BuildBar``: one bar per phase with its fraction, the count in the phase's unit, the time
elapsed and rich's estimate of the time left. ``serve`` on a terminal draws the same bar itself.
Under ``--json`` or off a terminal nothing is drawn (``run`` then does not ask for the steps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import TextIO

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn

from engine.build_progress import PHASE_READY, BuildProgress, BuildStep

#: Every step line starts with this (``BuildStep``'s tag comes first in msgspec's encoding).
STEP_PREFIX = '{"event":"build_step"'
_DECODER = msgspec.json.Decoder(BuildStep)


def parse_step(line: str) -> BuildStep | None:
    """The step on ``line`` (a line of ``serve --progress json``), or None for any other line."""
    if not line.startswith(STEP_PREFIX):
        return None
    try:
        return _DECODER.decode(line)
    except msgspec.DecodeError:
        return None


def json_lines(out: TextIO) -> BuildProgress:
    """Write each step as one JSON line on ``out`` and flush, so the parent sees it at once."""

    def write(step: BuildStep) -> None:
        out.write(msgspec.json.encode(step).decode() + "\n")
        out.flush()

    return write


class BuildBar:
    """The start-up bars on ``console``: a context manager; call it with each ``BuildStep``.

    Until the first step it shows ``what`` (the server process is starting: imports, the
    profile's model); each phase then gets its own bar, completed when the next one starts.
    The ``ready`` step (just before the server listens) removes nothing and stops the redraws,
    so the finished bars stay on the terminal.
    """

    def __init__(self, console: Console, what: str) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[count]}"),
            TimeRemainingColumn(elapsed_when_finished=True),
            console=console,
            transient=False,
        )
        self._starting: TaskID | None = self.progress.add_task(what, total=None, count="")
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> BuildBar:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()

    def __call__(self, step: BuildStep) -> None:
        if self._starting is not None:
            self.progress.remove_task(self._starting)
            self._starting = None
        if step.phase == PHASE_READY:
            self._finish_all()
            self.progress.stop()
            return
        task = self._tasks.get(step.phase)
        if task is None:
            self._finish_all()
            task = self._tasks[step.phase] = self.progress.add_task(step.phase, total=None, count="")
        total = step.total or None  # 0: size unknown, a pulsing bar
        count = f"{step.done:,}/{step.total:,} {step.unit}".rstrip() if step.total else ""
        if step.detail and not step.finished:
            count += f" {step.detail}"
        self.progress.update(task, total=total, completed=step.done, count=count)

    def _finish_all(self) -> None:
        for t in self.progress.tasks:
            if t.id not in self._tasks.values():
                continue
            if t.total is None:
                self.progress.update(t.id, total=1, completed=1)
            elif not t.finished:
                self.progress.update(t.id, completed=t.total)


@contextlib.contextmanager
def build_bar(console: Console | None, what: str) -> Iterator[BuildBar | None]:
    """A ``BuildBar`` on ``console`` while the block runs; None (nothing drawn) without a console."""
    if console is None:
        yield None
        return
    with BuildBar(console, what) as bar:
        yield bar
