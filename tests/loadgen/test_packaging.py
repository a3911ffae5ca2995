"""What a fresh clone relies on without running it: the LICENSE pyproject promises, a Dockerfile that can work.

CI has no container runtime, so the image is not built there; these checks catch what breaks a
build or a start without one: a COPY of a missing path, a default command the CLI does not
accept, a core dependency's system library missing from the slim base image.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

from loadgen.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, comments and blank lines dropped."""
    out = []
    for line in dockerfile.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_license_pyproject_promises_is_there() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    for name in project["license-files"]:
        assert (ROOT / name).read_text().startswith("MIT License")


def test_the_dockerfile_copies_what_exists_and_runs_a_command_the_cli_accepts() -> None:
    steps = _instructions(ROOT / "Dockerfile")
    for word, args in steps:
        if word == "COPY":
            *sources, _target = shlex.split(args)
            assert all((ROOT / src).exists() for src in sources), args
    # Exec form: JSON arrays.
    entrypoint = next(json.loads(args) for word, args in steps if word == "ENTRYPOINT")
    cmd = next(json.loads(args) for word, args in steps if word == "CMD")
    assert entrypoint == ["cbdc-bench"]
    args = build_parser().parse_args(cmd)
    assert args.command == "run" and args.out == "results"


def test_the_image_has_the_system_library_lightgbm_loads() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("lightgbm") for d in deps)
    installs = " ".join(args for word, args in _instructions(ROOT / "Dockerfile") if word == "RUN")
    assert "libgomp1" in installs
