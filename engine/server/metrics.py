"""``serve --metrics-port``: the server's counters as Prometheus metrics (``prometheus-client``).

Nothing on the hot path changes: a custom ``Collector`` reads the counters the server already
keeps (``Server.stats``, the same figures as a StatsRequest) when a scraper asks, so a scrape
every few seconds costs one stats snapshot, not a metric call per payment.

Thread safety: prometheus-client serves HTTP from its own thread, while the counters belong to
the event loop (a flush mutates them between bytecodes). The collector therefore takes its
snapshot *on* the loop (``call_soon_threadsafe``) and waits for it; the scrape sees one
consistent moment between two batches. If the loop does not answer in ``SNAPSHOT_TIMEOUT_S``
(a batch stuck for seconds), the scrape fails with that message rather than reading half-updated
counters.

Loopback by default: the figures are global to the whole server (every operator's payments,
result codes and shed counts) and the endpoint has no authentication, while ``--secrets`` shows
an operator only its own figures (issue 13). Exposing them beyond the machine is a deliberate
``--metrics-host`` choice.

Exposed (prefix ``cbdc_``; counters are totals since the server started, take ``rate()``):
payments by result code, engine transfers/batches/seconds, submits, shed submits, queue depth
and limit, batch sizes (a histogram with power-of-two buckets), hook seconds by phase and
``hook_ns_per_payment``, journal fsyncs/bytes/fsync seconds, trove rows and backlog, the
validator tier's queue and counters (with signatures on), connections.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from engine.codes import ResultCode

#: Longest a scrape waits for the event loop to take the snapshot.
SNAPSHOT_TIMEOUT_S = 5.0
HOOK_PHASES = ("authorize", "observe", "begin", "background")

#: (metric, type, help, key in ``Server.stats()``, scale): one row per plain figure.
_SERVER_FIGURES: tuple[tuple[str, str, str, str, float], ...] = (
    ("cbdc_transfers", "counter", "payments applied by the engine (shed payments excluded)", "transfers", 1),
    ("cbdc_batches", "counter", "engine batches committed", "batches", 1),
    ("cbdc_submits", "counter", "Submit frames received", "submits", 1),
    ("cbdc_frames", "counter", "frames received, every kind", "frames", 1),
    ("cbdc_shed_submits", "counter", "Submits answered OVERLOADED at admission", "shed_submits", 1),
    ("cbdc_shed_over_fair_share_submits", "counter", "of those, shed for exceeding the operator's fair share",
     "shed_over_fair_share", 1),
    ("cbdc_engine_seconds", "counter", "time inside Ledger.apply (hooks included)", "engine_s", 1),
    ("cbdc_connections_opened", "counter", "client connections accepted", "connections_total", 1),
    ("cbdc_connections", "gauge", "client connections open", "connections", 1),
    ("cbdc_queue_transfers", "gauge", "payments queued for the engine (as counted against the limit)",
     "queue_transfers", 1),
    ("cbdc_queue_submits", "gauge", "Submits queued for the engine", "queue_submits", 1),
    ("cbdc_queue_limit_transfers", "gauge", "queue_limit: payments queued before OVERLOADED", "queue_limit", 1),
    ("cbdc_queue_peak_transfers", "gauge", "most payments ever queued at once", "queue_peak_transfers", 1),
    ("cbdc_fair_share_transfers", "gauge", "one operator's share of the queue", "fair_share", 1),
    ("cbdc_write_buffered_bytes", "gauge", "reply bytes waiting in connections' write buffers",
     "write_buffered_bytes", 1),
    ("cbdc_uptime_seconds", "gauge", "seconds since the server started", "uptime_s", 1),
)  # fmt: skip

#: (metric, type, help, key in ``stats["journal"]``, scale).
_JOURNAL_FIGURES: tuple[tuple[str, str, str, str, float], ...] = (
    ("cbdc_journal_fsyncs", "counter", "journal fsyncs", "fsyncs", 1),
    ("cbdc_journal_written_bytes", "counter", "bytes appended to the journal", "bytes_written", 1),
    ("cbdc_journal_fsync_seconds", "counter", "time spent in journal fsyncs", "fsync_ms_total", 1e-3),
    ("cbdc_journal_entries", "counter", "journal entries (batches and admin changes)", "entries", 1),
    ("cbdc_journal_durable_seq", "gauge", "last journal entry known to be on disk", "durable_seq", 1),
)

#: (metric, type, help, key in ``stats["trove"]``, scale); figures a trove mode lacks are left out.
_TROVE_FIGURES: tuple[tuple[str, str, str, str, float], ...] = (
    ("cbdc_trove_rows_seen", "counter", "payments the surveillance log received", "rows_seen", 1),
    ("cbdc_trove_rows", "gauge", "rows durable in the trove", "rows", 1),
    ("cbdc_trove_backlog_rows", "gauge", "rows received but not yet written to the trove", "backlog_rows", 1),
    ("cbdc_trove_backlog_peak_rows", "gauge", "largest backlog so far", "backlog_rows_peak", 1),
    ("cbdc_trove_disk_bytes", "gauge", "trove bytes on disk", "bytes_on_disk", 1),
    ("cbdc_trove_rows_not_persisted", "counter", "rows lost to a failed trove write", "rows_not_persisted", 1),
)

#: (metric, type, help, key in ``stats["validators"]``, scale).
_VALIDATOR_FIGURES: tuple[tuple[str, str, str, str, float], ...] = (
    ("cbdc_validator_workers", "gauge", "signature validator workers", "workers", 1),
    ("cbdc_validator_transfers", "counter", "signed payments verified", "transfers", 1),
    ("cbdc_validator_worker_deaths", "counter", "validator workers that died", "worker_deaths", 1),
    ("cbdc_validator_failed_batches", "counter", "batches the tier could not verify", "failed_batches", 1),
    ("cbdc_validator_queue_submits", "gauge", "Submits waiting for signature verdicts", "queue_submits", 1),
    ("cbdc_validator_queue_transfers", "gauge", "payments waiting for signature verdicts", "queue_transfers", 1),
)


def _families(figures: tuple[tuple[str, str, str, str, float], ...], section: dict[str, Any]) -> Iterator[Metric]:
    for name, kind, text, key, scale in figures:
        value = section.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, text, value=value * scale)


def _batch_histogram(batch_sizes: dict[str, int], transfers: float) -> HistogramMetricFamily:
    """Engine batch sizes as a histogram; the server counts them in buckets ``lo-hi`` (powers of two)."""
    counts = sorted((int(k.rpartition("-")[2]), n) for k, n in batch_sizes.items())
    buckets: list[tuple[str, float]] = []
    running = 0
    for upper, n in counts:
        running += n
        buckets.append((str(upper), running))
    buckets.append(("+Inf", running))
    return HistogramMetricFamily(
        "cbdc_batch_size_payments", "payments per engine batch", buckets=buckets, sum_value=transfers
    )


class ServerCollector:
    """A prometheus-client ``Collector`` over one server's stats, read when scraped."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        stats = self._read()
        yield InfoMetricFamily(
            "cbdc_server", "what this server runs", value={"mode": stats["mode"], "profile": stats["profile"]}
        )
        yield GaugeMetricFamily("cbdc_accounts", "accounts in the ledger", value=stats["accounts"])
        codes = CounterMetricFamily(
            "cbdc_payments", "payments answered, by result code (shed ones as overloaded)", labels=["code"]
        )
        answered = stats["codes"]
        for code in ResultCode:
            name = code.name.lower()
            codes.add_metric([name], answered.get(name, 0))
        yield codes
        yield from _families(_SERVER_FIGURES, stats)
        yield _batch_histogram(stats["batch_sizes"], stats["transfers"])
        errors = CounterMetricFamily("cbdc_errors", "Error replies sent, by kind", labels=["kind"])
        for kind, n in stats["errors"].items():
            errors.add_metric([str(kind).lower()], n)
        yield errors
        yield from self._hooks(stats)
        yield from _families(_JOURNAL_FIGURES, stats.get("journal") or {})
        yield from _families(_TROVE_FIGURES, stats.get("trove") or {})
        yield from _families(_VALIDATOR_FIGURES, stats.get("validators") or {})

    @staticmethod
    def _hooks(stats: dict[str, Any]) -> Iterator[Metric]:
        hooks = stats.get("hooks")
        if not hooks:
            return
        ledger = CounterMetricFamily("cbdc_ledger_transfers", "payments the ledger and its hooks saw")
        ledger.add_metric([], stats["ledger"]["transfers"])
        yield ledger
        seconds = CounterMetricFamily(
            "cbdc_hook_seconds",
            "time spent in each hook by phase (divide its rate by cbdc_ledger_transfers' for the cost per payment)",
            labels=["hook", "phase"],
        )
        per_payment = GaugeMetricFamily(
            "cbdc_hook_ns_per_payment", "each hook's ns per payment since the server started", labels=["hook"]
        )
        errors = CounterMetricFamily("cbdc_hook_errors", "exceptions raised by each hook", labels=["hook"])
        for name, t in hooks.items():
            for phase in HOOK_PHASES:
                seconds.add_metric([name, phase], t[f"{phase}_ns"] / 1e9)
            per_payment.add_metric([name], t["ns_per_transfer"])
            errors.add_metric([name], t["errors"])
        yield from (seconds, per_payment, errors)


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()`` run on ``loop`` (from another thread), its result; TimeoutError if the loop is stuck."""
    box: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

    def run() -> None:
        try:
            box.set_result(fn())
        except BaseException as exc:
            box.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return box.result(SNAPSHOT_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(
            f"the server's event loop did not answer within {SNAPSHOT_TIMEOUT_S:g} s (a batch is stuck?)"
        ) from None


class MetricsEndpoint:
    """The HTTP endpoint (prometheus-client's WSGI server, in its own thread) of one server."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @classmethod
    def start(
        cls, read: Callable[[], dict[str, Any]], loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> MetricsEndpoint:
        """Serve the stats that ``read()`` gives (called on ``loop``) on ``host:port`` (0: a free port)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServerCollector(lambda: _on_loop(loop, read)))
        httpd, thread = start_http_server(port, addr=host, registry=registry)
        return cls(httpd, thread)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
