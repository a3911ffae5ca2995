"""``cbdc-bench run``: start a server, load it open-loop, audit it, stop it, write one result file.

The server runs as a separate process (``cbdc-bench serve --port 0``, so generator and server do
not share an interpreter or a GIL); its printed ``listening on HOST:PORT`` line gives the port.
After the warm-up and the measured window, the conservation audit runs through the server, and
everything this command started is stopped, also on errors and Ctrl-C. With ``--echo`` the server
acknowledges without a ledger: a calibration run that shows whether the generator keeps its
schedule at a given rate.

The defaults (baseline profile, 1,000,000 accounts, 300,000 payments/s, 5 s warm-up, 30 s
measured) finish in about 40 s on a 2-core machine, server start-up included.

Durability and access control are off by default, as in every headline run. ``--journal DIR``
makes the server journal every batch to a fresh file in DIR under ``--fsync`` (removed after the
run unless ``--keep-journal``): the cost of durability, measured as its own comparison (the
result's server stats carry the policy, fsync count and time). ``--secrets FILE`` turns on
authentication and account ownership; the server then has exactly ``--operators`` operators, so
their account ranges cover the ledger and every gateway pays from its own range.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

from loadgen.cmd_load import add_load_arguments, config_from_args, report, run_measure
from loadgen.gateway import LoadConfig
from loadgen.results import RunResult

#: The defaults are the headline question itself: 1M accounts at 300,000 payments/s for 30 s
#: (about 40 s with start-up on a 2-core machine).
DEFAULT_RATE_TPS = 300_000
DEFAULT_SECONDS = 30.0
DEFAULT_WARMUP = 5.0
DEFAULT_ACCOUNTS = 1_000_000
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


class ServerStartError(ChildProcessError):
    """The server process died or did not report its port in time."""


@dataclass
class ServerProcess:
    """A ``cbdc-bench serve`` child process; ``stop()`` always cleans it up."""

    args: list[str]
    startup_timeout_s: float
    host: str = ""
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    _stderr: IO[str] | None = None
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _pump_thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the server; closed in stop()
        cmd = [sys.executable, "-m", "loadgen", "serve", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerStartError(
                    f"server did not report 'listening on' within {self.startup_timeout_s:.0f} s{self._tail()}"
                )
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                raise ServerStartError(f"server exited with code {code} before listening{self._tail()}")
            match = _LISTENING.search(line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                return self.host, self.port

    def _pump(self) -> None:
        """Read the server's stdout to the end, so its pipe never fills."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().strip()
        return f"; its stderr ends with:\n{text[-2000:]}" if text else ""

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; the exit code (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._pump_thread is not None:
            self._pump_thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return self.proc.returncode


def server_arguments(
    *,
    profile: str,
    accounts: int,
    seed: int,
    operators: int,
    host: str = "127.0.0.1",
    scenario: str | None = None,
    echo: bool = False,
    secrets: str | None = None,
    journal: Path | None = None,
    fsync: str = "batch",
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``cbdc-bench serve`` arguments for a server on a free port of ``host``.

    With ``secrets`` the server gets exactly ``operators`` operators, so their account ranges
    cover the whole ledger; without, at least 64 (the server's default).
    """
    args = ["--host", host, "--port", "0", "--accounts", str(accounts), "--seed", str(seed)]
    args += ["--profile", profile, "--operators", str(operators if secrets else max(operators, 64))]
    if secrets:
        args += ["--secrets", secrets]
    if journal is not None:
        args += ["--journal", str(journal), "--fsync", fsync]
    if scenario is not None:
        if not Path(scenario).is_file():
            raise FileNotFoundError(f"scenario file {scenario} does not exist")
        args += ["--scenario", scenario]
    if echo:
        args.append("--echo")
    return args + list(extra)


@contextlib.contextmanager
def running_server(args: list[str], *, accounts: int) -> Iterator[ServerProcess]:
    """A started ``serve`` process (its ``host``/``port`` set), stopped on leaving, also on errors."""
    # Start-up builds the ledger (and hook state) for every account before listening.
    server = ServerProcess(args, startup_timeout_s=60.0 + accounts / 100_000)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def run_benchmark(
    config: LoadConfig,
    *,
    profile: str = "baseline",
    accounts: int = DEFAULT_ACCOUNTS,
    scenario: str | None = None,
    echo: bool = False,
    server_args: tuple[str, ...] = (),
    journal_dir: str | None = None,
    fsync: str = "batch",
    keep_journal: bool = False,
) -> RunResult:
    """Start a server for ``profile``/``accounts``, run ``config`` against it (port ignored), audit, stop.

    ``journal_dir``: journal to a fresh file there under ``fsync`` (removed afterwards unless
    ``keep_journal``); ``config.secrets``: the server authenticates with those secrets (and
    enforces account ownership).
    """
    journal: Path | None = None
    if journal_dir is not None:
        Path(journal_dir).mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        journal = Path(journal_dir) / f"journal-{stamp}-{os.getpid()}-{profile}.cbj"
    args = server_arguments(
        profile=profile,
        accounts=accounts,
        seed=config.seed,
        operators=config.operators,
        host=config.host,
        scenario=scenario,
        echo=echo,
        secrets=config.secrets,
        journal=journal,
        fsync=fsync,
        extra=server_args,
    )
    try:
        with running_server(args, accounts=accounts) as server:
            run_config = with_address(config, server.host, server.port)
            return run_measure(run_config, kind="run", server_pid=server.pid, audit=True, scenario=scenario, echo=echo)
    finally:
        if journal is not None:
            # The lock file outlives the server (deleting it could race a starting server); this
            # run's journal is its own, so its lock file goes with it unless the journal is kept.
            journal.with_name(journal.name + ".lock").unlink(missing_ok=True)
            if not keep_journal:
                journal.unlink(missing_ok=True)


def with_address(config: LoadConfig, host: str, port: int) -> LoadConfig:
    return msgspec.structs.replace(config, host=host, port=port)


# ---- command line ----------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="start a server, load it, audit it, write a result file", description=__doc__)
    p.add_argument("scenario", nargs="?", default=None, help="TOML scenario file with profile definitions")
    p.add_argument("--profile", default="baseline", help="hook profile (default baseline)")
    p.add_argument(
        "--accounts", type=int, default=DEFAULT_ACCOUNTS, help=f"ledger accounts (default {DEFAULT_ACCOUNTS:,})"
    )
    p.add_argument("--echo", action="store_true", help="calibration: the server acknowledges without a ledger")
    p.add_argument("--host", default="127.0.0.1", help="address for the server to listen on (default loopback)")
    p.add_argument("--journal", default=None, metavar="DIR", help="journal every batch to a fresh file in DIR")
    p.add_argument("--fsync", default="batch", help="journal fsync policy: batch, interval:MS or off (default batch)")
    p.add_argument("--keep-journal", action="store_true", help="keep the journal file after the run")
    add_load_arguments(p, rate=DEFAULT_RATE_TPS, seconds=DEFAULT_SECONDS, warmup=DEFAULT_WARMUP, out="results")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    config = config_from_args(args, host=args.host, port=0)
    result = run_benchmark(
        config,
        profile=args.profile,
        accounts=args.accounts,
        scenario=args.scenario,
        echo=args.echo,
        journal_dir=args.journal,
        fsync=args.fsync,
        keep_journal=args.keep_journal,
    )
    return report(result, as_json=args.json, out=args.out)
