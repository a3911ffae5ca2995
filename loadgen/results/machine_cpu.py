"""The whole machine's CPU over a run's measured window (result files, optional; issue 21).

The processes' own counters (the server's, the trove child's, the validators', the generator's)
miss the CPU the kernel spends for them in softirq and interrupt context (loopback networking,
block I/O completion) and any other process on the machine; on a 2-core machine that was ~0.5
of the 2 cores in a saturated ``full`` run. The capacity plan counts what they miss as its own
tier ("kernel and other", ``loadgen.plan.inputs``) so its maximum-rate prediction budgets all of
the machine's CPU, not only what the processes report.

The figures are the machine-wide counters of ``psutil.cpu_times()`` (``/proc/stat`` on Linux)
taken at the window's two edges: CPU seconds summed over all cores, by state. ``busy_s`` is what
was used (user, nice, system, irq, softirq); iowait is idle time with I/O outstanding, so it is
recorded but not busy. Steal (time the hypervisor ran another guest while this VM's cores had work)
is recorded but is no one's cost: it is CPU the machine did not get, so it is neither in
``busy_s`` nor in ``kernel_s``; ``stolen_cores`` says how much of the machine a run lost to it (on
a contended host, 0.2-0.6 of 2 cores in the 2026-12-03 14:29 runs, against ~0.01 idle).
``processes_s`` is the user + system CPU of every process alive at the window's end (its increase
since the start; the whole of it for a process started inside the window), so ``kernel_s`` =
``busy_s - processes_s`` is the CPU no process was charged with: softirq and interrupt work (the
loopback network between generator and server, disk completions), and processes that exited
inside the window. A shared machine's other processes are in ``processes_s``, not in
``kernel_s``: the plan budgets the kernel's CPU, never another user's.
"""

from __future__ import annotations

import time

import msgspec
import psutil

#: The states summed into ``busy_s`` (``psutil.cpu_times`` names; absent on a platform: 0).
BUSY_STATES = ("user", "nice", "system", "irq", "softirq")
_STATES = (*BUSY_STATES, "steal", "iowait", "idle")


class MachineCpu(msgspec.Struct, frozen=True, kw_only=True):
    """CPU seconds of all cores by state over ``seconds`` of wall clock (the measured window)."""

    seconds: float
    cores: int
    user_s: float
    nice_s: float
    system_s: float
    irq_s: float
    softirq_s: float
    steal_s: float
    iowait_s: float
    idle_s: float
    processes_s: float  # user + system CPU of all processes (see the module docstring)

    @property
    def busy_s(self) -> float:
        """CPU seconds the machine used (every state but idle, iowait and steal)."""
        return self.user_s + self.nice_s + self.system_s + self.irq_s + self.softirq_s

    @property
    def stolen_cores(self) -> float:
        """Cores the hypervisor took from this VM over the window, on average (0 on bare metal)."""
        return self.steal_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def kernel_s(self) -> float:
        """CPU seconds the machine used that no process's counters hold (at least 0)."""
        return max(self.busy_s - self.processes_s, 0.0)


class CpuSample(msgspec.Struct, frozen=True):
    """One reading of the machine-wide counters (cumulative since boot) and when it was taken."""

    at_ns: int
    states_s: dict[str, float]
    #: user + system CPU seconds of each process, by (pid, start time): a reused pid is another process.
    processes_s: dict[tuple[int, float], float]


def sample() -> CpuSample:
    """The counters now (~10 ms for a hundred processes: call it off the event loop, ``asyncio.to_thread``)."""
    times = psutil.cpu_times()
    at_ns = time.monotonic_ns()
    processes = {}
    for p in psutil.process_iter(["cpu_times", "create_time"]):
        cpu = p.info["cpu_times"]
        if cpu is not None and p.info["create_time"] is not None:
            processes[(p.pid, float(p.info["create_time"]))] = float(cpu.user + cpu.system)
    return CpuSample(at_ns, {s: float(getattr(times, s, 0.0)) for s in _STATES}, processes)


def window(start: CpuSample | None, end: CpuSample | None) -> MachineCpu | None:
    """The machine's CPU between two samples (None if either is missing or they are out of order)."""
    if start is None or end is None or end.at_ns <= start.at_ns:
        return None
    d = {s: max(end.states_s.get(s, 0.0) - start.states_s.get(s, 0.0), 0.0) for s in _STATES}
    processes = sum(max(v - start.processes_s.get(k, 0.0), 0.0) for k, v in end.processes_s.items())
    return MachineCpu(
        seconds=(end.at_ns - start.at_ns) / 1e9,
        cores=psutil.cpu_count() or 1,
        processes_s=processes,
        **{f"{s}_s": v for s, v in d.items()},
    )
