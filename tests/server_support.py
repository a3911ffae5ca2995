"""Helpers for the server tests: clients, small stand-in hooks, the test ledger size and seed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.client import Client
from engine.hooks.base import Hook, Transfers
from engine.hooks.blacklist import Blacklist, BlacklistConfig
from engine.hooks.freeze import Freeze, FreezeConfig
from engine.ledger import Ledger
from engine.server import ServerThread

TEST_ACCOUNTS = 20_000
TEST_SEED = 7_301


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


#: The ``start_server`` fixture: ``start_server(hooks=None, **config) -> ServerThread``.
StartServer = Callable[..., ServerThread]


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
