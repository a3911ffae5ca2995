"""Hooks for tests: user-style hooks loaded by ``module:attribute``, stand-ins that fail or take a
known time, and the real freeze and blacklist hooks with nobody on their lists at start."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.hooks.base import Hook, Transfers
from engine.hooks.blacklist import Blacklist, BlacklistConfig
from engine.hooks.freeze import Freeze, FreezeConfig
from engine.ledger import Ledger


class FailingHook(Hook):
    """Raises in the phases it is told to, on the batches numbered in ``fail_on`` (all if None)."""

    name = "failing"

    def __init__(self, phase: str = "authorize", fail_on: list[int] | None = None) -> None:
        self.phase, self.fail_on = phase, fail_on
        self.batches = 0
        self.observed = 0

    def _maybe_fail(self, phase: str) -> None:
        if phase == self.phase and (self.fail_on is None or self.batches in self.fail_on):
            raise RuntimeError(f"injected failure in {phase}")

    def begin_batch(self, batch: np.ndarray) -> None:
        self.batches += 1
        self._maybe_fail("begin")

    def authorize(self, transfers: Transfers, ledger: Any) -> np.ndarray | None:
        self._maybe_fail("authorize")
        return None

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        self._maybe_fail("observe")
        self.observed += 1


def make_failing(**kwargs: Any) -> Hook:
    """A factory, to test loading ``module:factory``."""
    return FailingHook(**kwargs)


def not_a_hook() -> object:
    return object()


NOT_CALLABLE = 42


class PacedHook(Hook):
    """Sleeps ``us_per_transfer`` per transfer in authorize: a server of known, small capacity."""

    name = "paced"

    def __init__(self, us_per_transfer: float = 20.0) -> None:
        self.seconds_per_transfer = us_per_transfer / 1e6

    def authorize(self, transfers: Transfers, ledger: Any) -> np.ndarray | None:
        time.sleep(self.seconds_per_transfer * len(transfers))
        return None


def freeze_hook() -> Freeze:
    """The real freeze hook, with nobody frozen at start."""
    return Freeze(FreezeConfig(frozen_fraction=0.0))


def blacklist_hook() -> Blacklist:
    """The real blacklist hook, with nobody listed at start."""
    return Blacklist(BlacklistConfig(listed_fraction=0.0))


class SlowHook(Hook):
    """Sleeps in authorize: makes the engine slow so the server's queue fills (overload tests)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def authorize(self, transfers: Transfers, ledger: Ledger) -> None:
        time.sleep(self.seconds)
