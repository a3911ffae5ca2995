"""What a result was measured on: machine, interpreter, libraries, code version."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import msgspec

from engine.signing import ed25519_verify_rate

_LIBRARIES = ("numpy", "msgspec", "uvloop", "hdrhistogram", "cbdc-bench")


class Environment(msgspec.Struct, frozen=True):
    cpu_model: str
    cores: int
    memory_bytes: int
    os: str
    python: str
    libraries: dict[str, str]
    git_commit: str
    git_dirty: bool
    #: Ed25519 verifications per CPU second on one core (``engine.signing.ed25519_verify_rate``),
    #: measured for signed runs only (None otherwise): what a signed run's rate is set against.
    ed25519_verify_per_cpu_s: float | None = None


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


def collect(*, signed: bool = False) -> Environment:
    """Describe this machine and this checkout (``signed``: with the Ed25519 calibration, ~0.25 s)."""
    return Environment(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_bytes=_memory_bytes(),
        os=platform.platform(),
        python=platform.python_version(),
        libraries={name: _version(name) for name in _LIBRARIES},
        git_commit=_git("rev-parse", "HEAD") or "unknown",
        git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
        ed25519_verify_per_cpu_s=ed25519_verify_rate() if signed else None,
    )
