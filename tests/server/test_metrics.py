"""``serve --metrics-port``: the Prometheus endpoint, scraped over real HTTP, agrees with the server's stats."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.server import ServerConfig
from loadgen.cli.main import build_parser
from loadgen.cli.serve import config_from_args
from loadgen.generator.workload import Workload
from tests.support.hooks import freeze_hook
from tests.support.servers import StartServer, connect


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=30) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_scrape_agrees_with_stats(start_server: StartServer, workload: Workload, tmp_path: Path) -> None:
    st = start_server(hooks=[freeze_hook()], journal=str(tmp_path / "j"), metrics_port=0, max_batch=512)
    endpoint = st.server.metrics_endpoint
    assert endpoint is not None
    assert endpoint.address[0] == "127.0.0.1"  # loopback unless --metrics-host says otherwise
    before = _scrape(endpoint.url)
    assert before[("cbdc_payments_total", (("code", "ok"),))] == 0
    with connect(st, operator=1) as c:
        c.freeze(5)
        batch = workload.batch(3000, first_id=0, operator=1)
        batch["payer"][:7] = 5  # frozen: a second result code besides ok
        codes = np.concatenate([c.transfer(part) for part in np.array_split(batch, 6)])
        stats = c.stats()
    after = _scrape(endpoint.url)
    answered = {dict(k[1])["code"]: v for k, v in after.items() if k[0] == "cbdc_payments_total"}
    assert sum(answered.values()) == len(codes) == 3000
    assert answered["frozen"] == np.count_nonzero(codes == 9) >= 7
    assert answered["ok"] == stats["codes"]["ok"]
    assert after[("cbdc_transfers_total", ())] == stats["transfers"] == 3000
    assert after[("cbdc_batch_size_payments_count", ())] == stats["batches"]
    assert after[("cbdc_batch_size_payments_sum", ())] == 3000
    assert after[("cbdc_batch_size_payments_bucket", (("le", "+Inf"),))] == stats["batches"]
    assert after[("cbdc_journal_fsyncs_total", ())] == stats["journal"]["fsyncs"] > 0
    assert after[("cbdc_journal_written_bytes_total", ())] == stats["journal"]["bytes_written"] > 0
    authorize_s = after[("cbdc_hook_seconds_total", (("hook", "freeze"), ("phase", "authorize")))]
    assert authorize_s == pytest.approx(stats["hooks"]["freeze"]["authorize_ns"] / 1e9) and authorize_s > 0
    assert after[("cbdc_queue_transfers", ())] == 0
    assert after[("cbdc_queue_limit_transfers", ())] == st.config.queue_limit
    assert ("cbdc_server_info", (("mode", "ledger"), ("profile", "baseline"))) in after
    assert not any(name.startswith("cbdc_validator") for name, _ in after)  # no signature tier here


def test_no_endpoint_unless_asked(start_server: StartServer) -> None:
    assert start_server().server.metrics_endpoint is None


def test_serve_options_reach_the_config() -> None:
    args = build_parser().parse_args(["serve", "--metrics-port", "9464", "--metrics-host", "0.0.0.0"])
    config = config_from_args(args)
    assert (config.metrics_port, config.metrics_host) == (9464, "0.0.0.0")
    assert config_from_args(build_parser().parse_args(["serve"])).metrics_port is None
    with pytest.raises(ValueError, match="metrics_port"):
        ServerConfig(metrics_port=70_000)


def test_signature_tier_shows_its_queue(start_server: StartServer) -> None:
    st = start_server(signatures="required", metrics_port=0)
    assert st.server.metrics_endpoint is not None
    after = _scrape(st.server.metrics_endpoint.url)
    assert after[("cbdc_validator_queue_submits", ())] == 0
    assert after[("cbdc_validator_workers", ())] == st.call(st.server.stats)["validators"]["workers"]
