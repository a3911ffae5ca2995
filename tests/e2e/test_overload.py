"""Overload and stuck clients: shedding with bounded memory and recovery; timeouts for stuck frames.

The overload test runs ``cbdc-bench serve`` as its own process (so its peak RSS is its own, read
from /proc) with a paced hook that gives it a known capacity (50,000 transfers/s), offers twice
that open-loop for 2 s, then half of it for 2 s, and checks: OVERLOADED answers during the surge,
peak RSS bounded, latency back to normal afterwards, every Submit answered, the server's result
counts equal to the client's (nothing lost, nothing applied twice), shed transfers never applied.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.client import Client
from engine.codes import ResultCode
from engine.wire import Codec, Error, ErrorCode, FrameReader, Hello, Results, Submit
from loadgen.generator.workload import Workload, WorkloadConfig
from tests.support.servers import StartServer, connect

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = 10_000
CAPACITY_TPS = 50_000  # the paced hook's 20 µs per transfer
SUBMIT = 250
SCENARIO = """
[profiles]
paced = ["tests.support.hooks:PacedHook"]
[hooks.custom."tests.support.hooks:PacedHook"]
us_per_transfer = 20
"""


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class _OpenLoop:
    """Sends Submits on a fixed schedule from one thread, reads Results in another."""

    def __init__(self, port: int, phases: list[tuple[float, float]]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.codec = Codec()
        self.sock.sendall(self.codec.frame(Hello(0)))
        self.reader = FrameReader(1 << 30)
        self._welcome = self._read_one()
        # Schedule: one Submit every SUBMIT/rate seconds per phase.
        times: list[float] = []
        t = 0.0
        for rate, seconds in phases:
            end = t + seconds
            while t < end:
                times.append(t)
                t += SUBMIT / rate
        self.scheduled = np.array(times)
        pool = Workload(WorkloadConfig(accounts=ACCOUNTS), stream=3).batch(SUBMIT * 16, first_id=0)
        self.batches = []
        for i in range(len(times)):
            b = pool[(i % 16) * SUBMIT : (i % 16 + 1) * SUBMIT].copy()
            b["transfer_id"] = np.arange(i * SUBMIT, (i + 1) * SUBMIT)
            self.batches.append(b)
        self.received = np.full(len(times), np.nan)
        self.sent = np.full(len(times), np.nan)
        self.codes: list[np.ndarray | None] = [None] * len(times)
        self.errors: list[Error] = []

    def _read_one(self) -> object:
        while True:
            bodies = self.reader.feed(self.sock.recv(1 << 16))
            if bodies:
                return self.codec.server_decoder.decode(bodies[0])

    def run(self) -> None:
        start = time.monotonic() + 0.05
        reader = threading.Thread(target=self._receive, args=(start,))
        reader.start()
        for i, at in enumerate(self.scheduled):
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sock.sendall(self.codec.frame(Submit(i, self.batches[i].tobytes())))
            self.sent[i] = time.monotonic() - start
        reader.join(30)
        self.sock.close()

    def _receive(self, start: float) -> None:
        left = len(self.scheduled)
        while left:
            data = self.sock.recv(1 << 20)
            if not data:
                return
            now = time.monotonic() - start
            for body in self.reader.feed(data):
                msg = self.codec.server_decoder.decode(body)
                if type(msg) is Results:
                    self.received[msg.seq] = now
                    self.codes[msg.seq] = np.frombuffer(msg.codes, dtype=np.uint8)
                    left -= 1
                elif type(msg) is Error:
                    self.errors.append(msg)
                    return


@pytest.mark.slow
def test_twice_capacity_sheds_with_bounded_memory_and_recovers(tmp_path: Path) -> None:
    scenario = tmp_path / "paced.toml"
    scenario.write_text(SCENARIO)
    cmd = [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--accounts", str(ACCOUNTS)]
    cmd += ["--scenario", str(scenario), "--profile", "paced", "--max-batch", "1024", "--queue-limit", "4096"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        port = int(line.rsplit(":", 1)[1])
        load = _OpenLoop(port, [(2 * CAPACITY_TPS, 2.0), (CAPACITY_TPS / 2, 2.0)])
        rss_before, _ = _rss_kib(proc.pid)
        load.run()
        _, peak = _rss_kib(proc.pid)
        print(f"[overload] server RSS before {rss_before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")

        assert load.errors == []
        assert not np.isnan(load.received).any(), "some Submits were never answered"
        surge = load.scheduled < 2.0
        offered_tps = int(surge.sum()) * SUBMIT / max(float(load.sent[surge].max()), 1e-9)
        if offered_tps < 1.5 * CAPACITY_TPS:
            # A busy machine (another job on the cores) leaves this client unable to offer the
            # surge: what it would test (shedding under 2x) did not happen, so it says so instead.
            pytest.skip(f"the client offered {offered_tps:,.0f}/s, not 2x the capacity {CAPACITY_TPS:,}/s")
        codes = np.concatenate([c for c in load.codes if c is not None])
        shed = np.array([bool((c == ResultCode.OVERLOADED).all()) for c in load.codes])
        latency = load.received - load.scheduled
        tail = load.scheduled >= 3.0  # the last second, after a second of recovery
        p99_tail = float(np.percentile(latency[tail], 99))
        print(
            f"[overload] surge: {shed[surge].mean():.0%} of Submits shed, "
            f"p99 {np.percentile(latency[surge], 99) * 1e3:.0f} ms; "
            f"last second: {shed[tail].mean():.0%} shed, p99 {p99_tail * 1e3:.1f} ms"
        )
        assert shed[surge].sum() > 0  # it sheds instead of queueing without bound
        assert not shed[tail].any() and p99_tail < 0.1  # and recovers
        assert peak - rss_before < 64 * 1024  # memory bounded by the queue, not by the offered load

        with Client("127.0.0.1", port, operator=1) as c:
            stats = c.stats()
            client_counts = np.bincount(codes, minlength=len(ResultCode))
            server_counts = [stats["codes"].get(code.name.lower(), 0) for code in ResultCode]
            assert client_counts.tolist() == server_counts  # nothing lost, nothing counted twice
            assert stats["transfers"] == int((codes != ResultCode.OVERLOADED).sum())
            assert c.audit().ok
        # Shed transfers never reached the ledger; applied ones cannot apply again.
        with Client("127.0.0.1", port, operator=0) as c:
            shed_i = np.flatnonzero(shed)[:4]
            ok_i = [i for i, k in enumerate(load.codes) if k is not None and (k == ResultCode.OK).any()][:4]
            for i in shed_i:
                assert ResultCode.DUPLICATE not in c.transfer(load.batches[i])
            for i in ok_i:
                again = c.transfer(load.batches[i])
                assert (again[load.codes[i] == ResultCode.OK] == ResultCode.DUPLICATE).all()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# ---- stuck clients ---------------------------------------------------------------------------


def _until_closed(sock: socket.socket) -> tuple[list[object], float]:
    codec, reader, got = Codec(), FrameReader(1 << 30), []
    t0 = time.monotonic()
    while data := sock.recv(1 << 16):
        got += [codec.server_decoder.decode(b) for b in reader.feed(data)]
    return got, time.monotonic() - t0


def test_connection_that_never_says_hello_is_cut_off(start_server: StartServer) -> None:
    st = start_server(handshake_timeout_ms=300)
    with socket.create_connection(st.address, timeout=10) as sock:
        got, waited = _until_closed(sock)
    assert [getattr(m, "code", None) for m in got] == [ErrorCode.HANDSHAKE_TIMEOUT]
    assert 0.25 < waited < 2.0


def test_trickled_or_abandoned_frame_is_cut_off_and_not_applied(start_server: StartServer, workload: Workload) -> None:
    st = start_server(frame_timeout_ms=400)
    records = workload.batch(50, first_id=0)
    frame = Codec().frame(Submit(1, records.tobytes()))
    with connect(st) as bystander, socket.create_connection(st.address, timeout=10) as sock:
        sock.sendall(Codec().frame(Hello(0)))
        # Slowloris: a byte every 100 ms never completes a frame in time.
        t0 = time.monotonic()
        for b in frame[:12]:
            try:
                sock.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.1)
        got, _ = _until_closed(sock)
        assert time.monotonic() - t0 < 3.0
        codes = [getattr(m, "code", None) for m in got]
        assert codes[-1] == ErrorCode.FRAME_TIMEOUT, got
        assert bystander.audit().ok  # others are served meanwhile
        assert bystander.stats()["transfers"] == 0  # nothing of the partial frame applied


def test_slow_but_whole_frames_are_not_cut_off(start_server: StartServer, workload: Workload) -> None:
    st = start_server(frame_timeout_ms=300)
    with connect(st) as c:
        for i in range(4):  # 500 ms between frames, longer than the frame timeout: idle is fine
            assert len(c.transfer(workload.batch(10, first_id=i * 10))) == 10
            time.sleep(0.5)
        assert c.audit().ok
