"""What one load run measured: latency histograms, per-second series, result codes, lag, CPU.

A ``Measurement`` is filled by the gateways of one generator process (one per event loop, shared
by its gateways) and merged across processes by adding counts: histograms add bucket by bucket,
series add second by second. Nothing here averages a percentile.

Time bases (all ns on the monotonic clock, relative to the run's common start):

* latency = reply received - *scheduled* time, recorded per transfer, one clock read per reply;
* the total histogram and the result codes hold only transfers *scheduled* after the warm-up;
* per-second series and per-second histograms are indexed by the second in which the reply
  arrived (as HdrHistogram interval logs are) and ``sent`` by the second of the send, so the
  series also show the warm-up and the drain;
* achieved throughput counts replies *received* inside the measured window, divided by its
  length: when the server falls behind, replies to the window's payments arrive later and do not
  count, which is what "achieved" must mean for an open-loop run.

Transfers that never got a reply (sent but unanswered when the drain ended, or never sent
because the generator could not keep up) are recorded in the histogram with latency = end of the
run - scheduled time, a lower bound of their true latency, and counted apart; dropping them would
hide exactly the slow tail that matters.
"""

from __future__ import annotations

import numpy as np

from engine.codes import ResultCode
from loadgen.generator.histogram import Histogram, Layout

_CODE_SLOTS = 256


class Measurement:
    """Counters of one generator process, or of several merged."""

    def __init__(self, *, seconds_total: int, warmup_ns: int, window_end_ns: int, late_ns: int) -> None:
        self.layout = Layout()
        self.warmup_ns = warmup_ns
        self.window_end_ns = window_end_ns
        self.late_ns = late_ns
        n = max(seconds_total, 1)
        self.latency = Histogram(self.layout)  # measured transfers only (scheduled after warm-up)
        self.send_lag = Histogram(self.layout)  # measured transfers: actual send - scheduled
        self.per_second: list[Histogram | None] = [None] * n  # by reply second, warm-up included
        self.sent = np.zeros(n, dtype=np.int64)
        self.completed = np.zeros(n, dtype=np.int64)
        self.ok = np.zeros(n, dtype=np.int64)
        self.max_lag_ns = np.zeros(n, dtype=np.int64)
        self.codes = np.zeros(_CODE_SLOTS, dtype=np.int64)  # measured transfers, by ResultCode
        self.scheduled = 0  # every transfer of the schedule, warm-up included
        self.scheduled_measured = 0
        self.sent_total = 0
        self.results_total = 0  # transfers answered by a Results frame (each exactly once)
        self.window_completed = 0  # replies received inside the measured window
        self.window_ok = 0
        self.late = 0  # measured transfers sent more than late_ns after their schedule
        self.unanswered = 0  # sent, no reply by the end of the drain
        self.unsent = 0  # never sent: the generator (or the connection's buffer) fell behind
        self.error_transfers = 0  # answered by an Error frame instead of Results
        self.protocol_errors = 0  # replies that matched nothing we sent, or the wrong length
        self.errors: dict[str, int] = {}  # Error frame code -> frames
        self.generator_cpu_s = 0.0
        self.frames_sent = 0
        self.bytes_sent = 0  # Submit frames, framing included, warm-up included
        self.bytes_received = 0  # everything the server sent back, framing included

    def _second(self, rel_ns: int) -> int:
        return min(max(rel_ns // 1_000_000_000, 0), len(self.sent) - 1)

    # ---- recording (hot path: once per frame) -------------------------------------------------

    def on_sent(self, scheduled: np.ndarray, send_rel_ns: int) -> None:
        """A frame of transfers with these scheduled offsets left at ``send_rel_ns``."""
        n = len(scheduled)
        sec = self._second(send_rel_ns)
        self.sent[sec] += n
        self.sent_total += n
        self.frames_sent += 1
        lag_max = send_rel_ns - int(scheduled[0])
        if lag_max > self.max_lag_ns[sec]:
            self.max_lag_ns[sec] = lag_max
        k = self._measured_from(scheduled)
        if k < n:
            lag = send_rel_ns - scheduled[k:]
            self.send_lag.record(lag)
            if lag_max > self.late_ns:
                self.late += int(np.count_nonzero(lag > self.late_ns))

    def on_results(self, scheduled: np.ndarray, codes: np.ndarray, recv_rel_ns: int) -> None:
        """Codes for a frame of transfers (scheduled offsets), received at ``recv_rel_ns``."""
        n = len(scheduled)
        latency = recv_rel_ns - scheduled
        lo = recv_rel_ns - int(scheduled[-1])
        hi = recv_rel_ns - int(scheduled[0])
        over = latency > self.layout.highest if hi > self.layout.highest else None
        if over is not None:
            latency = np.minimum(latency, self.layout.highest)
        idx = self.layout.indices(latency)
        sec = self._second(recv_rel_ns)
        hist = self.per_second[sec]
        if hist is None:
            hist = self.per_second[sec] = Histogram(self.layout)
        hist.record_indices(idx, lo, hi)
        if over is not None:
            hist.saturated += int(np.count_nonzero(over))
        ok = int(np.count_nonzero(codes == ResultCode.OK))
        self.completed[sec] += n
        self.ok[sec] += ok
        self.results_total += n
        if self.warmup_ns <= recv_rel_ns < self.window_end_ns:
            self.window_completed += n
            self.window_ok += ok
        k = self._measured_from(scheduled)
        if k < n:
            self.latency.record_indices(idx[k:], lo, recv_rel_ns - int(scheduled[k]))
            if over is not None:
                self.latency.saturated += int(np.count_nonzero(over[k:]))
            self.codes += np.bincount(codes[k:], minlength=_CODE_SLOTS)[:_CODE_SLOTS]

    def on_unanswered(self, scheduled: np.ndarray, end_rel_ns: int, *, sent: bool) -> None:
        """Transfers with no reply at the end: censored latency (a lower bound), counted apart."""
        if len(scheduled) == 0:
            return
        if sent:
            self.unanswered += len(scheduled)
        else:
            self.unsent += len(scheduled)
        k = self._measured_from(scheduled)
        self.latency.record(end_rel_ns - scheduled[k:])

    def _measured_from(self, scheduled: np.ndarray) -> int:
        """Index of the first transfer scheduled after the warm-up (schedules are sorted)."""
        if scheduled[0] >= self.warmup_ns:
            return 0
        return int(np.searchsorted(scheduled, self.warmup_ns, side="left"))

    # ---- merging -----------------------------------------------------------------------------

    def merge(self, other: Measurement) -> None:
        """Add ``other`` (another process's counters over the same run) into this one."""
        if len(other.sent) != len(self.sent) or other.warmup_ns != self.warmup_ns:
            raise ValueError("cannot merge measurements of differently shaped runs")
        self.latency.add(other.latency)
        self.send_lag.add(other.send_lag)
        for i, h in enumerate(other.per_second):
            if h is None:
                continue
            mine = self.per_second[i]
            if mine is None:
                self.per_second[i] = mine = Histogram(self.layout)
            mine.add(h)
        self.sent += other.sent
        self.completed += other.completed
        self.ok += other.ok
        np.maximum(self.max_lag_ns, other.max_lag_ns, out=self.max_lag_ns)
        self.codes += other.codes
        for name in (
            "scheduled",
            "scheduled_measured",
            "sent_total",
            "results_total",
            "window_completed",
            "window_ok",
            "late",
            "unanswered",
            "unsent",
            "error_transfers",
            "protocol_errors",
            "generator_cpu_s",
            "frames_sent",
            "bytes_sent",
            "bytes_received",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for code, count in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + count

    def code_counts(self) -> dict[str, int]:
        """Measured transfers by result code name (only codes that occurred)."""
        out: dict[str, int] = {}
        for value in np.flatnonzero(self.codes).tolist():
            try:
                name = ResultCode(value).name.lower()
            except ValueError:
                name = f"code_{value}"
            out[name] = int(self.codes[value])
        return out
