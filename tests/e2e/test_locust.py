"""Locust integration: a real server, Locust headless in a subprocess, stats and audit checked.

Locust is never imported in the test process: importing it monkey-patches the interpreter with
gevent, which would break every asyncio and thread based test that runs after it.
"""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.auth import ROLE_ADMIN, Secrets, generate_secrets
from engine.client import Client, parse_host

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_parse_host() -> None:
    assert parse_host("tcp://127.0.0.1:7400") == ("127.0.0.1", 7400)
    assert parse_host("localhost:9") == ("localhost", 9)
    for bad in (None, "", "http://x:1", "tcp://nohost"):
        with pytest.raises(ValueError, match="host"):
            parse_host(bad)


@contextlib.contextmanager
def serving(*args: str) -> Iterator[tuple[str, int]]:
    """A ``cbdc-bench serve`` subprocess on a free port, stopped on leaving."""
    with subprocess.Popen(
        [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--accounts", "20000", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "listening on" in line, line
            host, port = line.split("listening on", 1)[1].strip().split()[0].rsplit(":", 1)
            yield host, int(port)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    with serving() as address:
        yield address


def run_locust(host: str, port: int, tmp_path: Path, *extra: str) -> tuple[list[dict[str, str]], dict[str, int]]:
    prefix = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "locustfile.py"), "--host", f"tcp://{host}:{port}",
         "--headless", "-u", "3", "-r", "3", "-t", "3s", "--csv", str(prefix), "--html", str(tmp_path / "report.html"),
        "--only-summary", "--cbdc-batch", "500",
         *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(f"{prefix}_stats.csv") as f:
        stats = list(csv.DictReader(f))
    assert (tmp_path / "report.html").stat().st_size > 1_000
    with open(f"{prefix}_result_codes.csv") as f:
        codes = {row["code"]: int(row["transfers"]) for row in csv.DictReader(f)}
    return stats, codes


def test_locust_headless_run_reports_requests_and_keeps_the_ledger_sound(
    server: tuple[str, int], tmp_path: Path
) -> None:
    host, port = server
    for extra in ((), ("--processes", "2", "--cbdc-profile", "baseline", "--cbdc-accounts", "5000")):
        stats, codes = run_locust(host, port, tmp_path, *extra)
        row = next(r for r in stats if r["Name"].startswith("submit baseline x500"))
        assert int(row["Request Count"]) > 0
        assert int(row["Failure Count"]) == 0
        assert codes["ok"] > 0.9 * sum(codes.values()), codes
        assert "stale_id" not in codes  # the second run resumes numbering above the first
    with Client(host, port) as c:
        assert c.audit().ok


def test_locust_authenticates_and_debits_only_its_own_accounts(tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.toml"
    generate_secrets(secrets_file, 8)
    with serving("--secrets", str(secrets_file), "--operators", "8") as (host, port):
        stats, codes = run_locust(host, port, tmp_path, "--cbdc-secrets", str(secrets_file))
        row = next(r for r in stats if r["Name"].startswith("submit baseline x500"))
        assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0
        assert "forbidden_payer" not in codes and codes["ok"] > 0.9 * sum(codes.values()), codes
        secrets = Secrets.load(secrets_file)
        with Client(host, port, secret=secrets.secret(ROLE_ADMIN, 0), role="admin") as admin:
            assert admin.audit().ok


def test_locust_profile_mismatch_is_one_error_line_not_a_traceback_per_user(
    server: tuple[str, int], tmp_path: Path
) -> None:
    host, port = server
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "locustfile.py"), "--host", f"tcp://{host}:{port}",
         "--headless", "-u", "4", "-r", "4", "-t", "5s", "--only-summary", "--cbdc-profile", "full"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert output.count("--cbdc-profile 'full', but the server runs 'baseline'") == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def _locust(host: str, port: int, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "locustfile.py"), "--host", f"tcp://{host}:{port}",
         "--headless", "-u", "2", "-r", "2", "-t", "3s", "--only-summary", "--cbdc-batch", "200", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_locust_logs_the_result_codes_while_it_runs(server: tuple[str, int], tmp_path: Path) -> None:
    done = _locust(*server, tmp_path, "--cbdc-codes-every", "0.5")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    running = [line for line in output.splitlines() if "cbdc-bench result codes so far (" in line]
    assert running and all(" ok " in line for line in running), output[-3000:]
    assert output.count("cbdc-bench result codes (") == 1  # the final totals, once


def test_locust_without_a_server_is_one_error_line_not_a_traceback_per_user(tmp_path: Path) -> None:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    done = _locust("127.0.0.1", port, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert output.count(f"no cbdc-bench session with 127.0.0.1:{port}") == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
