"""Live progress of ``run`` and ``load`` on a terminal (rich), and nothing otherwise.

A run of the defaults takes ~40 s; without a live line the user sees nothing until the summary.
The line is redrawn twice a second from counters the generator keeps anyway (``Measurement``:
sent, answered and unsettled per second, the per-second latency histograms), so it adds no work
per payment. It describes the *last complete second*: the current one is still filling.

Quiet unless stderr is a terminal and ``--json`` is off: a pipe, a CI log or a JSON consumer gets
only the summary (``progress_console``). (``compare`` has its own bar: trials done of the
estimated total, and the time left.) With ``--processes`` above 1 the counters live in the
generator processes, so the line shows the elapsed time and phase only.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from loadgen.generator.measure import Measurement

#: Seconds between redraws.
REFRESH_S = 0.5


def progress_console(*, as_json: bool, console: Console | None = None) -> Console | None:
    """The console to draw live progress on: stderr when it is a terminal and ``--json`` is off, else None."""
    console = console or Console(stderr=True)
    return console if console.is_terminal and not as_json else None


def phase_of(elapsed_s: float, warmup_s: float, seconds: float) -> str:
    if elapsed_s < warmup_s:
        return "warm-up"
    return "measuring" if elapsed_s < warmup_s + seconds else "draining"


class LoadProgress:
    """The live line of one open-loop load: ``started`` at the common start, ``watch`` a measurement."""

    def __init__(self, console: Console, *, rate_tps: float, warmup_s: float, seconds: float) -> None:
        self.console = console
        self.rate_tps = rate_tps
        self.warmup_s = warmup_s
        self.seconds = seconds
        self.start_ns: int | None = None
        self.measurements: list[Measurement] = []

    def started(self, start_ns: int) -> None:
        self.start_ns = start_ns

    def watch(self, m: Measurement) -> None:
        """Read ``m`` (filled by this process's gateways) on each redraw."""
        self.measurements.append(m)

    def line(self, now_ns: int) -> str:
        """The progress line at ``now_ns`` (monotonic)."""
        if self.start_ns is None:
            return "connecting and preparing the gateways..."
        elapsed = max(now_ns - self.start_ns, 0) / 1e9
        total = self.warmup_s + self.seconds
        head = f"{min(elapsed, total):5.1f}/{total:g} s {phase_of(elapsed, self.warmup_s, self.seconds)}"
        last = int(elapsed) - 1  # the last complete second
        if not self.measurements:
            return f"{head} (per-second figures are in the generator processes)"
        if last < 0:
            return f"{head}  offered {self.rate_tps:,.0f}/s"
        m = self.measurements[0]
        sent = sum(int(x.sent[min(last, len(x.sent) - 1)]) for x in self.measurements)
        answered = sum(int(x.completed[min(last, len(x.completed) - 1)]) for x in self.measurements)
        unsettled = sum(int(x.unsettled[min(last, len(x.unsettled) - 1)]) for x in self.measurements)
        hist = m.per_second[min(last, len(m.per_second) - 1)]
        p99 = f"{hist.value_at(99.0) / 1e6:,.2f} ms" if hist is not None and hist.total else "-"
        return (
            f"{head}  offered {self.rate_tps:,.0f}/s  sent {sent:,}/s  settled {answered - unsettled:,}/s  "
            f"p99 {p99}  shed or hook error {unsettled:,}/s"
        )

    async def show(self) -> None:
        """Redraw the line until cancelled, then once more: the state at the end stays on the terminal."""
        with Live(Text(self.line(time.monotonic_ns())), console=self.console, auto_refresh=False) as live:
            try:
                while True:
                    await asyncio.sleep(REFRESH_S)
                    live.update(Text(self.line(time.monotonic_ns())), refresh=True)
            except asyncio.CancelledError:
                live.update(Text(self.line(time.monotonic_ns())), refresh=True)
