"""The server as a child process: ``cbdc-bench serve`` started, its port read, always stopped.

The server runs as a separate process (``cbdc-bench serve --port 0``, so generator and server do
not share an interpreter or a GIL); its printed ``listening on HOST:PORT`` line gives the port.
``running_server`` stops it on leaving, also on errors and Ctrl-C. Given ``on_build``, the server
is started with ``--progress json`` and each start-up step it reports before listening
(``engine.build_progress``) is handed to ``on_build`` (e.g. ``run``'s bar on a terminal).
"""

from __future__ import annotations

import contextlib
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

from engine.build_progress import BuildProgress
from loadgen.generator.progress_build import parse_step

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
    #: Receives the server's start-up steps (None: the server is not asked for them).
    on_build: BuildProgress | None = None

    def start(self) -> tuple[str, int]:
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the server; closed in stop()
        cmd = [sys.executable, "-m", "loadgen", "serve", *self.args]
        if self.on_build is not None:
            cmd += ["--progress", "json"]
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
            step = parse_step(line)
            if step is not None:
                if self.on_build is not None:
                    self.on_build(step)
                continue
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
    args = ["--listen", host, "--port", "0", "--accounts", str(accounts), "--seed", str(seed)]
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
def running_server(args: list[str], *, accounts: int, on_build: BuildProgress | None = None) -> Iterator[ServerProcess]:
    """A started ``serve`` process (its ``host``/``port`` set), stopped on leaving, also on errors.

    ``on_build`` receives its start-up steps (``ServerProcess.on_build``).
    """
    # Start-up builds the ledger (and hook state) for every account before listening.
    server = ServerProcess(args, startup_timeout_s=60.0 + accounts / 100_000, on_build=on_build)
    try:
        server.start()
        yield server
    finally:
        server.stop()
