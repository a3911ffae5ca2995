"""What a result was measured on: machine, interpreter, libraries, code version, CPU calibration."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import msgspec

_LIBRARIES = ("numpy", "msgspec", "uvloop", "hdrhistogram", "cbdc-bench")


class Calibration(msgspec.Struct, frozen=True, kw_only=True):
    """A CPU calibration score taken at a run's start, so figures from two machines compare as ratios.

    ``engine_tps`` is a fixed single-core workload (``loadgen.harness.calibration``: the ledger
    alone, baseline profile, a fixed account count and batch size, a few hundred ms after a
    warm-up): divide a run's throughput by it to compare machines. ``rates`` is where later
    calibrations add theirs by name (e.g. ``ed25519_verify_per_s``); readers ignore names they
    do not know.
    """

    engine_tps: float
    accounts: int
    batch: int
    seconds: float
    rates: dict[str, float] = {}


class Environment(msgspec.Struct, frozen=True):
    cpu_model: str
    cores: int
    memory_bytes: int
    os: str
    python: str
    libraries: dict[str, str]
    git_commit: str
    git_dirty: bool
    calibration: Calibration | None = None  # None: not taken (files before version 2, compare summaries)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> Environment:
    """Describe this machine and this checkout."""
    return Environment(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_bytes=_memory_bytes(),
        os=platform.platform(),
        python=platform.python_version(),
        libraries={name: _version(name) for name in _LIBRARIES},
        git_commit=_git("rev-parse", "HEAD") or "unknown",
        git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
    )
