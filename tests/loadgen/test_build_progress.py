"""Start-up progress: a server reports its build phases in order, each to 100%, over a pipe to ``run``."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Sequence

import pytest
from rich.console import Console

from engine.build_progress import PHASE_ACCOUNTS, PHASE_HOOKS, PHASE_READY, BuildStep
from engine.chunks import DEFAULT_CHUNK
from engine.server import ServerConfig
from engine.server.server import build_ledger
from loadgen.generator.progress_build import BuildBar, build_bar, json_lines, parse_step
from loadgen.harness.server import ServerProcess, server_arguments

#: Three chunks of the population build: the smallest size with progress inside the phase.
ACCOUNTS = 2 * DEFAULT_CHUNK + 1000
PROFILE = "enforcement"


def _check_order(steps: Sequence[BuildStep], phases: list[str]) -> None:
    """Phases in ``phases`` order, each non-decreasing from 0 and finished by its last step."""
    seen = [s.phase for i, s in enumerate(steps) if i == 0 or steps[i - 1].phase != s.phase]
    assert seen == phases, seen  # each phase once, in order
    for phase in phases:
        mine = [s for s in steps if s.phase == phase]
        done = [s.done for s in mine]
        assert done == sorted(done) and len({s.total for s in mine}) == 1
        assert mine[-1].finished and mine[-1].done == mine[-1].total >= 1


def test_build_reports_accounts_then_hooks_each_to_the_end() -> None:
    steps: list[BuildStep] = []
    ledger = build_ledger(ServerConfig(accounts=ACCOUNTS, profile=PROFILE), progress=steps.append)
    _check_order(steps, [PHASE_ACCOUNTS, PHASE_HOOKS])
    accounts = [s for s in steps if s.phase == PHASE_ACCOUNTS]
    assert accounts[0].done == 0 and accounts[-1].done == ACCOUNTS and len(accounts) == 4  # start + 3 chunks
    hooks = [s for s in steps if s.phase == PHASE_HOOKS]
    assert [s.detail for s in hooks[:-1]] == [h.name for h in ledger.hooks] and len(ledger.hooks) > 1
    assert hooks[-1].total == len(hooks) - 1


def test_steps_survive_the_json_line_round_trip() -> None:
    out = io.StringIO()
    write = json_lines(out)
    steps = [BuildStep(PHASE_ACCOUNTS, 5, 10, "accounts"), BuildStep(PHASE_HOOKS, 1, 4, "hooks", "freeze")]
    for step in steps:
        write(step)
    lines = out.getvalue().splitlines()
    assert [parse_step(line) for line in lines] == steps
    assert parse_step("listening on 127.0.0.1:5") is None and parse_step('{"event":"build_step",') is None


def test_a_started_server_reports_its_build_in_order_before_listening() -> None:
    steps: list[BuildStep] = []
    args = server_arguments(profile=PROFILE, accounts=ACCOUNTS, seed=3, operators=2)
    server = ServerProcess(args, startup_timeout_s=120, on_build=steps.append)
    try:
        server.start()
    finally:
        server.stop()
    assert server.port > 0
    _check_order(steps, [PHASE_ACCOUNTS, PHASE_HOOKS, PHASE_READY])
    assert steps[-1] == BuildStep(PHASE_READY, 1, 1)
    assert max(s.done for s in steps if s.phase == PHASE_ACCOUNTS) == ACCOUNTS


def test_the_bar_draws_phases_on_a_terminal_and_nothing_without_one() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with BuildBar(console, "starting") as bar:
        for step in [
            BuildStep(PHASE_ACCOUNTS, 0, 1000, "accounts"),
            BuildStep(PHASE_ACCOUNTS, 1000, 1000, "accounts"),
            BuildStep(PHASE_HOOKS, 0, 2, "hooks", "wallet_limits"),
            BuildStep(PHASE_HOOKS, 2, 2, "hooks"),
            BuildStep(PHASE_READY, 1, 1),
        ]:
            bar(step)
        assert all(t.finished for t in bar.progress.tasks)
        assert [t.description for t in bar.progress.tasks] == [PHASE_ACCOUNTS, PHASE_HOOKS]
    drawn = buffer.getvalue()
    assert "1,000/1,000 accounts" in drawn and "2/2 hooks" in drawn and "100%" in drawn
    with build_bar(None, "starting") as nothing:
        assert nothing is None


@pytest.mark.parametrize("unknown_size", [True, False])
def test_a_phase_of_unknown_size_is_finished_when_the_next_begins(unknown_size: bool) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with BuildBar(console, "starting") as bar:
        bar(BuildStep("journal", 0, 0) if unknown_size else BuildStep(PHASE_ACCOUNTS, 10, 100, "accounts"))
        bar(BuildStep(PHASE_HOOKS, 0, 1, "hooks"))
        first = bar.progress.tasks[0]
        assert first.finished


@pytest.mark.parametrize(("mode", "drawn"), [("bar", True), ("auto", False)])
def test_serve_draws_its_bar_when_asked_and_nothing_off_a_terminal(mode: str, drawn: bool) -> None:
    """``serve --progress bar`` off a terminal prints the finished bars once; ``auto`` there prints none."""
    args = [*server_arguments(profile="limits", accounts=ACCOUNTS, seed=3, operators=2), "--progress", mode]
    with subprocess.Popen(
        [sys.executable, "-m", "loadgen", "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()
            assert first.startswith("listening on"), first  # no JSON step lines unless asked for them
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        errors = proc.stderr.read()
    bars = f"{ACCOUNTS:,}/{ACCOUNTS:,} accounts" in errors and "1/1 hooks" in errors
    assert bars is drawn, errors[-2000:]
