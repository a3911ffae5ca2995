"""``run --target`` against a ``serve`` started by the test (scraped on ``--metrics-port`` meanwhile),
and ``run --repeats`` into a directory that ``diff`` reads."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.cli.main import main
from loadgen.harness.server import running_server, server_arguments
from loadgen.results.run import load
from tests.support.servers import scenario_with_slo

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(url: str, name: str) -> float:
    """The sum of a metric's samples (over its labels)."""
    with urllib.request.urlopen(url, timeout=30) as reply:
        text = reply.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_run_against_a_running_server_marks_it_external(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics_port = _free_port()
    args = server_arguments(
        profile="compliance", accounts=5000, seed=3, operators=2, extra=("--metrics-port", str(metrics_port))
    )
    with running_server(args, accounts=5000) as server:
        target = f"{server.host}:{server.port}"
        argv = ["run", "--scenario", scenario_with_slo(tmp_path, "2000.0"), "--target", target, "--rate", "3000"]
        argv += ["--seconds", "1", "--warmup", "0.3", "--drain", "2", "--out", str(tmp_path), "--json"]
        code = main(argv)
        answered = _metric(f"http://127.0.0.1:{metrics_port}/metrics", "cbdc_payments_total")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, summary
    result = load(summary["result_file"])
    assert result.server.external and result.server.pid is None
    assert result.summary.profile == "compliance" and result.summary.accounts == 5000  # the server's own
    assert result.server.cpu_s is not None and result.server.cpu_s > 0  # from its stats' process_cpu_s
    assert result.summary.audit_ok is True
    assert answered == result.counts.results == result.counts.scheduled  # every payment, by its result code


def test_target_refuses_server_options_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--target", "127.0.0.1:7480", "--journal", str(tmp_path), "--echo"]) == 2
    err = capsys.readouterr().err
    assert "--echo, --journal configure the server that run starts" in err
    assert main(["compare", "--target", "127.0.0.1:7480"]) == 2
    assert "unless you pass --reuse-server" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["load", "--target", "nonsense"])
    assert "is not HOST:PORT" in capsys.readouterr().err


def test_repeats_write_one_directory_that_diff_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--scenario", scenario_with_slo(tmp_path, "2000.0"), "--accounts", "5000", "--rate", "2000"]
    argv += ["--seconds", "0.8", "--warmup", "0.2", "--drain", "2", "--repeats", "2", "--out", str(tmp_path / "r")]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    files = [json.loads(line)["result_file"] for line in captured.out.strip().splitlines()]
    assert len(files) == 2 and Path(files[0]).parent == Path(files[1]).parent
    folder = Path(files[0]).parent
    assert folder.name.startswith("repeats-") and "cbdc-bench diff" in captured.err
    assert main(["diff", str(folder), str(folder), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["a_runs"], d["b_runs"]) == (2, 2)
    assert {m["judgement"] for m in d["metrics"]} == {"no significant change"}
