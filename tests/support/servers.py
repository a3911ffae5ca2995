"""Helpers for tests against a server: the test ledger size and seed, clients, exactly-once checks.

The in-process server itself comes from the ``start_server`` fixture (``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.client import Client
from engine.profiles import default_scenario_text
from engine.server import ServerThread

TEST_ACCOUNTS = 20_000
TEST_SEED = 7_301


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


def scenario_with_slo(tmp_path: Path, slo_p99_ms: str, edits: tuple[tuple[str, str], ...] = ()) -> str:
    """The shipped scenario with another p99 SLO: the verdict's plumbing is under test here, not
    whether this (shared, loaded) machine meets 20 ms. ``edits``: further (old, new) text replacements."""
    text = default_scenario_text().decode()
    for old, new in (("slo_p99_ms = 20.0", f"slo_p99_ms = {slo_p99_ms}"), *edits):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"slo-{slo_p99_ms}-{len(edits)}.toml"
    path.write_text(text)
    return str(path)
