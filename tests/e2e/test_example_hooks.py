"""The example hook file (``examples/my_hooks.py``) under ``engine``, ``serve`` and ``run``, one import rule.

The commands run as the installed ``cbdc-bench`` script from a directory that is not the
repository, so the hooks are found only through ``--hooks-path`` (or the working directory):
the entry-point script does not put the working directory on the path as ``python -m`` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadgen.harness.server import ServerProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCENARIO = str(EXAMPLES / "my_hooks.toml")
CBDC_BENCH = str(Path(sys.executable).parent / "cbdc-bench")


def _cbdc_bench(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CBDC_BENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_engine_imports_own_hooks_from_hooks_path_or_working_directory(tmp_path: Path) -> None:
    args = ["engine", "--scenario", SCENARIO, "--profile", "mine", "--accounts", "20000", "--json"]
    args += ["--seconds", "0.2", "--warmup", "0.05"]
    missing = _cbdc_bench(args, cwd=tmp_path)
    assert missing.returncode == 2 and "cannot import module 'my_hooks'" in missing.stderr
    for cwd, extra in ((tmp_path, ["--hooks-path", str(EXAMPLES)]), (EXAMPLES, [])):
        done = _cbdc_bench([*args, *extra], cwd=cwd)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert set(result["hooks"]) == {"large_payment_cap", "category_counter"}
        assert result["hook_stats"]["large_payment_cap"]["refused"] > 0  # cap 2,000 yuan in my_hooks.toml
        assert result["hook_stats"]["category_counter"]["settled"] > 0


def test_serve_loads_own_hooks_from_hooks_path(tmp_path: Path) -> None:
    args = ["--scenario", SCENARIO, "--profile", "mine", "--accounts", "20000", "--port", "0"]
    server = ServerProcess([*args, "--hooks-path", str(EXAMPLES)], startup_timeout_s=60)
    try:
        _, port = server.start()  # builds the ledger with the profile's hooks before listening
        assert port > 0
    finally:
        server.stop()


def test_run_passes_hooks_path_to_its_server(tmp_path: Path) -> None:
    args = ["run", "--scenario", SCENARIO, "--profile", "mine", "--hooks-path", str(EXAMPLES), "--accounts", "20000"]
    args += ["--rate", "2000", "--seconds", "1", "--warmup", "0", "--drain", "2", "--out", str(tmp_path), "--json"]
    done = _cbdc_bench(args, cwd=tmp_path)
    assert "cannot import" not in done.stderr, done.stderr
    result = json.loads(Path(json.loads(done.stdout)["result_file"]).read_text())
    assert result["server"]["welcome"]["profile"] == "mine"
    hooks = result["server"]["stats_end"]["hooks"]
    assert {"large_payment_cap", "category_counter"} <= set(hooks)
