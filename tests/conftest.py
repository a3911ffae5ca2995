"""Shared fixtures: in-process servers on port 0, seeded workloads, small test hooks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from engine.client import Client
from engine.codes import ResultCode
from engine.hooks.base import Hook, Transfers
from engine.ledger import FLAG_BLACKLISTED, FLAG_FROZEN, Ledger
from engine.server import ServerConfig, ServerThread
from loadgen.workload import Workload, WorkloadConfig

TEST_ACCOUNTS = 20_000
TEST_SEED = 7_301


class FlagHook(Hook):
    """A minimal freeze/blacklist hook: vetoes transfers touching flagged accounts.

    Stands in for the real policy hooks so the server's admin plumbing is tested on its own.
    """

    def __init__(self, name: str, flag: np.uint8, code: ResultCode, add: str, remove: str) -> None:
        self.name = name
        self._flag = flag
        self._code = code
        self._ledger: Ledger | None = None
        setattr(self, add, self._set)
        setattr(self, remove, self._clear)

    def attach(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def _set(self, accounts: np.ndarray) -> None:
        assert self._ledger is not None
        self._ledger.flags[accounts] |= self._flag

    def _clear(self, accounts: np.ndarray) -> None:
        assert self._ledger is not None
        self._ledger.flags[accounts] &= ~self._flag

    def authorize(self, transfers: Transfers, ledger: Ledger) -> np.ndarray:
        hit = ((ledger.flags[transfers.payer] | ledger.flags[transfers.payee]) & self._flag) != 0
        return np.where(hit, self._code, 0).astype(np.uint8)


def freeze_hook() -> FlagHook:
    return FlagHook("freeze", FLAG_FROZEN, ResultCode.FROZEN, "freeze", "unfreeze")


def blacklist_hook() -> FlagHook:
    return FlagHook("blacklist", FLAG_BLACKLISTED, ResultCode.BLACKLISTED, "add", "remove")


class SlowHook(Hook):
    """Sleeps in authorize: makes the engine slow so the server's queue fills (overload tests)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def authorize(self, transfers: Transfers, ledger: Ledger) -> None:
        time.sleep(self.seconds)


StartServer = Callable[..., ServerThread]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """``start_server(hooks=None, **config)``: a running in-process server, stopped after the test."""
    started: list[ServerThread] = []

    def start(hooks: Sequence[Hook] | None = None, **config: Any) -> ServerThread:
        cfg = ServerConfig(**{"port": 0, "accounts": TEST_ACCOUNTS, "seed": TEST_SEED, **config})
        st = ServerThread(cfg, hooks=hooks)
        started.append(st)
        st.start()
        return st

    yield start
    for st in started:
        st.stop()


@pytest.fixture
def workload() -> Workload:
    return Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED))


def connect(st: ServerThread, operator: int = 0, **kw: Any) -> Client:
    host, port = st.address
    return Client(host, port, operator=operator, **kw)


def assert_nothing_more(client: Client, wait_s: float = 0.2) -> None:
    """No unread reply is pending on ``client`` (exactly-once checks)."""
    assert not client._inbox, f"unexpected replies: {list(client._inbox)[:3]}"
    client.sock.settimeout(wait_s)
    try:
        data = client.sock.recv(1 << 16)
    except TimeoutError:
        return
    finally:
        client.sock.settimeout(30)
    raise AssertionError(f"unexpected {len(data)} more bytes from the server")
