"""``cbdc-bench serve`` as a separate process: the listening line, a client, clean signal shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from engine.client import Client
from engine.wire import Error, ErrorCode
from loadgen.generator.workload import Workload, WorkloadConfig

ACCOUNTS = 10_000


def _start(*extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--accounts", str(ACCOUNTS), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server listens (or dies)
    if not line.startswith("listening on "):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"server did not start: {line!r} {err}")
    host, port = line.removeprefix("listening on ").strip().rsplit(":", 1)
    assert host == "127.0.0.1"  # loopback by default
    return proc, int(port)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_its_port_and_stops_cleanly_on_signal(sig: signal.Signals) -> None:
    proc, port = _start("--max-wait-us", "1000")
    try:
        with Client("127.0.0.1", port, operator=1) as c:
            assert c.welcome is not None and c.welcome.accounts == ACCOUNTS
            wl = Workload(WorkloadConfig(accounts=ACCOUNTS))
            assert len(c.transfer(wl.batch(100, first_id=0, operator=1))) == 100
            assert c.audit().ok
            t0 = time.monotonic()
            proc.send_signal(sig)
            # A connected client is told why the connection ends, then it ends.
            msg = c.recv()
            assert type(msg) is Error and msg.code == ErrorCode.SHUTTING_DOWN, msg
            with pytest.raises(ConnectionError):
                c.recv()
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - t0 < 10
        assert "stopped: 100 transfers" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_rejects_an_impossible_configuration() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--max-batch", "40000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "max_batch must be in 1..32768" in proc.stderr
