"""Running a server: ``serve`` (the ``serve`` command, until a signal) and ``ServerThread`` (tests)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

import uvloop

from engine.auth import Secrets
from engine.build_progress import PHASE_READY, BuildProgress, BuildStep
from engine.hooks.base import Hook
from engine.memory import check_accounts_fit
from engine.server.config import ServerConfig
from engine.server.server import Server


def serve(config: ServerConfig, *, out: TextIO | None = None, progress: BuildProgress | None = None) -> int:
    """Run the server until SIGINT or SIGTERM (the ``serve`` command); prints ``listening on H:P``.

    Refuses, in one line, a ledger that cannot fit in memory (``check_accounts_fit``).
    ``progress`` receives the start-up's steps (``engine.build_progress``) before that line.
    """
    check_accounts_fit(config.accounts, config.profile, config.scenario)
    return uvloop.run(_serve(config, out or sys.stdout, progress))


async def _serve(config: ServerConfig, out: TextIO, progress: BuildProgress | None) -> int:
    # Builds (and recovers) the ledger before listening: clients never wait on it.
    server = Server(config, build_progress=progress)
    host, port = await server.start()
    if progress is not None:
        progress(BuildStep(PHASE_READY, 1, 1))
    print(f"listening on {host}:{port}", file=out, flush=True)
    # After the listening line, which parents read first (some merge stderr into stdout).
    for line in server.startup_notes():
        print(line, file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    failed = server.failed
    assert failed is not None
    failed.add_done_callback(lambda _: stop.set())  # a failed journal stops the server too
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await stopped
    finally:
        stopped.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
    s = server.stats()
    print(
        f"stopped: {s['transfers']:,} transfers in {s['batches']:,} batches "
        f"(mean {s['batch_size_mean']:,.0f}), {s['overloaded']:,} overloaded, {s['connections_total']} connections",
        file=sys.stderr,
        flush=True,
    )
    return 1 if failed.done() else 0


class ServerThread:
    """A Server on its own uvloop in a background thread: for tests and in-process calibration.

    Use as a context manager; ``address`` is (host, port) once started.
    """

    def __init__(
        self, config: ServerConfig, *, hooks: Sequence[Hook] | None = None, secrets: Secrets | None = None
    ) -> None:
        self.config = config
        self.server = Server(config, hooks=hooks, secrets=secrets)
        self.address: tuple[str, int] = ("", 0)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="cbdc-server", daemon=True)

    def start(self) -> tuple[str, int]:
        self._thread.start()
        self._ready.wait(60)
        if self._failure is not None:
            raise RuntimeError(f"server failed to start: {self._failure}") from self._failure
        return self.address

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result (inspect state safely)."""
        assert self._loop is not None
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn(*args))
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(30):
            raise TimeoutError("server loop did not answer")
        return box[0]

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            uvloop.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.address = await self.server.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()
