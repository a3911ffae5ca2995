"""Resuming an interrupted ``compare`` (``compare --resume OUT``) from its completed phases.

A comparison writes, before its first phase, what it was asked (``OUT/compare.plan``: the
scenario, profiles, plan and seed), and after every phase one JSON line to ``OUT/compare.phases`` (the
phase's key and its result file). The run is deterministic given those and the phases'
outcomes: profile orders and equal-load rates come from the seed, and a search's next rate from
the outcomes so far. So a resumed comparison runs the same program again and, for each phase
whose key is in the log, reads its saved result file instead of measuring; the first phase not in
the log is measured, and from there on everything is new. A session (profile and repeat)
interrupted half-way goes on against a fresh server, which has not seen the earlier phases of that
session (said on the console).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from loadgen.results.compare import Plan
from loadgen.results.run import RunResult, load

#: Not ``*.json``: ``report`` reads every ``*.json`` under a comparison as a result file.
PLAN_FILE = "compare.plan"
PHASE_LOG = "compare.phases"


class ComparePlan(msgspec.Struct, frozen=True):
    """What a comparison was asked: enough to run the same program again."""

    scenario: str | None
    profiles: list[str] | None
    plan: Plan
    seed: int
    calibrate: bool


class PhaseKey(msgspec.Struct, frozen=True):
    """A phase's place in the program: session, the how-manieth phase of it, and its rate."""

    repeat: int
    profile: str
    stage: str
    index: int  # 0-based, within its session
    offered_tps: float


class LoggedPhase(msgspec.Struct, frozen=True):
    key: PhaseKey
    file: str  # relative to the comparison's directory


def save_plan(out_dir: Path, plan: ComparePlan) -> None:
    (out_dir / PLAN_FILE).write_bytes(msgspec.json.encode(plan))


def load_plan(out_dir: Path) -> ComparePlan:
    path = out_dir / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: --resume needs the directory of a comparison started by this version "
            "(it writes compare.plan before its first phase)"
        )
    try:
        return msgspec.json.decode(path.read_bytes(), type=ComparePlan)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path} is damaged ({exc}); start the comparison again in a new directory") from exc


class PhaseLog:
    """The completed phases of one comparison directory: read at start, appended after each phase."""

    def __init__(self, out_dir: Path, *, resume: bool) -> None:
        self.out_dir = out_dir
        self.path = out_dir / PHASE_LOG
        self.done: dict[PhaseKey, str] = {}
        if resume and self.path.is_file():
            decoder = msgspec.json.Decoder(LoggedPhase)
            for line in self.path.read_bytes().splitlines():
                try:
                    logged = decoder.decode(line)
                except msgspec.DecodeError:
                    break  # a line torn by the interruption: the phases before it stand
                self.done[logged.key] = logged.file
        elif self.path.exists():
            self.path.unlink()
        self.replayed = 0

    def saved(self, key: PhaseKey) -> RunResult | None:
        """The saved result of phase ``key`` if it completed before, else None."""
        file = self.done.get(key)
        if file is None or not (self.out_dir / file).is_file():
            return None
        self.replayed += 1
        return load(self.out_dir / file)

    def record(self, key: PhaseKey, file: str) -> None:
        """Phase ``key`` completed with result ``file`` (relative to the directory)."""
        if self.done.get(key) == file:
            return
        self.done[key] = file
        with self.path.open("ab") as f:
            f.write(msgspec.json.encode(LoggedPhase(key, file)) + b"\n")
