"""One-line errors a user meets first: a ledger too large for the machine, a port that is not a cbdc-bench server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.memory import (
    BUILD_TEMPORARY_BYTES,
    MemoryBudgetError,
    build_bytes_per_account,
    check_accounts_fit,
    mem_available_bytes,
)
from loadgen.cli.main import main
from loadgen.generator import gateway


def test_mem_available_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:     750 kB\n")
    assert mem_available_bytes(meminfo) == 750 * 1024
    assert mem_available_bytes(tmp_path / "missing") is None


def test_budget_scales_with_accounts_and_refuses_only_what_cannot_fit() -> None:
    per_account = build_bytes_per_account("baseline")
    assert per_account >= 4 + 1  # at least the ledger's own columns: uint32 balance, class and flags
    check_accounts_fit(1_000, "baseline", available_bytes=int(per_account * 2_000) + BUILD_TEMPORARY_BYTES)
    with pytest.raises(MemoryBudgetError, match=r"1,000,000 accounts need about .* GiB .* but .* is available"):
        check_accounts_fit(1_000_000, "baseline", available_bytes=int(per_account * 500_000))


@pytest.mark.parametrize("command", [["engine"], ["serve"], ["run"]])
def test_too_many_accounts_is_one_line_before_allocating(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    if mem_available_bytes() is None:
        pytest.skip("no /proc/meminfo")
    assert main([*command, "--accounts", "100000000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "100,000,000,000 accounts need about" in err and "MemAvailable" in err


@pytest.fixture(params=["garbage", "silent"])
def not_cbdc(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A TCP service that answers an HTTP error to anything, or accepts and says nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            if request.param == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield request.param, listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


def test_load_against_a_non_cbdc_service_says_so(
    not_cbdc: tuple[str, int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kind, port = not_cbdc
    monkeypatch.setattr(gateway, "HANDSHAKE_TIMEOUT_S", 0.5)
    assert main(["load", "--target", f"127.0.0.1:{port}", "--seconds", "1", "--warmup", "0", "--rate", "100"]) == 2
    err = capsys.readouterr().err
    expected = "is not a cbdc-bench server" if kind == "garbage" else "sent no handshake reply"
    assert f"127.0.0.1:{port}" in err and expected in err, err
