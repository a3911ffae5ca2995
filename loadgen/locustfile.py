"""Locust integration: drive the cbdc-bench server from Locust's UI, CSV/HTML reports and workers.

    locust -f loadgen/locustfile.py --host tcp://127.0.0.1:7400
    locust -f loadgen/locustfile.py --host tcp://127.0.0.1:7400 --headless -u 8 -r 8 -t 30s \
        --csv out --html report.html
    locust -f loadgen/locustfile.py --host tcp://127.0.0.1:7400 --processes 2 ...

Each Locust user is a gateway of one authorised operator: it connects with the server's plain
wire protocol (a blocking socket client, which gevent makes cooperative; uvloop cannot run inside
Locust's workers), and submits batches drawn from the same seeded workload as the native
generator (with ids of its own: the workload's deliberate duplicates are not re-sent here). Each
batch is one Locust request named ``submit <profile> x<batch> (...)`` (so Locust's RPS counts
batches, not payments); it fails when
the server answers with an error or sheds transfers (``overloaded``, ``hook_error``); business
rejections (insufficient funds, blacklisted...) are counted per result code, summed across
workers, logged while it runs (the running totals every ``--cbdc-codes-every`` seconds, and as
JSON at ``/cbdc/codes`` on the web UI), printed at the end and written to
``<csv prefix>_result_codes.csv`` with ``--csv``.

Honest labelling: Locust is closed-loop (a user sends its next batch only after the reply) and
keeps response times in milliseconds, so its latencies are not comparable to the native open-loop
generator's (``cbdc-bench load`` / ``run``), which is the reference measurement.
"""

from __future__ import annotations

import collections
import csv
import itertools
import logging
import os
import time
from typing import Any, NoReturn

import gevent
import msgspec
import numpy as np
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import WorkerRunner

from engine.auth import ROLE_OPERATOR, load_secrets
from engine.client import Client, ServerError, parse_host
from engine.codes import ResultCode, name_counts
from loadgen.generator.workload import DEFAULT_SEED, BatchPool, Workload, WorkloadConfig

log = logging.getLogger("cbdc-bench.locust")

#: Codes that mean the system, not the payment, failed: such a batch is a failed request.
SYSTEM_FAILURES = (ResultCode.OVERLOADED, ResultCode.HOOK_ERROR)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("cbdc-bench")
    group.add_argument("--cbdc-batch", type=int, default=1_000, help="transfers per submitted batch (default 1000)")
    group.add_argument(
        "--cbdc-operators", type=int, default=8, help="operators the users are spread over (default 8; <= server's)"
    )
    group.add_argument(
        "--cbdc-workers",
        type=int,
        default=0,
        help="worker processes in the whole run (default: --processes, else 1); with --master/--worker set it "
        "to the number of workers so each operator is driven by one process only",
    )
    group.add_argument(
        "--cbdc-accounts",
        type=int,
        default=0,
        help="draw payers and payees from the first N accounts (default 0: all of the server's)",
    )
    group.add_argument(
        "--cbdc-profile",
        default="",
        help="profile the server must be running (default: any); a mismatch stops the run with an error",
    )
    group.add_argument(
        "--cbdc-secrets",
        default="",
        help="for a server with authentication on: the secrets TOML file, or 'env' for CBDC_OPERATOR_SECRET_<n>",
    )
    group.add_argument("--cbdc-seed", type=int, default=DEFAULT_SEED, help="workload seed (default: the server's)")
    group.add_argument("--cbdc-pool", type=int, default=8, help="pre-generated batches per user (default 8)")
    group.add_argument(
        "--cbdc-think-ms", type=float, default=0.0, help="pause between a user's batches, ms (default 0)"
    )
    group.add_argument(
        "--cbdc-codes-every",
        type=float,
        default=10.0,
        help="log the result codes so far every this many seconds while it runs (default 10; 0: only at the end)",
    )


class LocustState:
    """Per-process state, kept on the Locust environment rather than in module globals."""

    def __init__(self) -> None:
        self.codes: collections.Counter[str] = collections.Counter()
        #: The greenlet logging the running totals (master or local runner, while a test runs).
        self.ticker: gevent.Greenlet | None = None
        self.next_id: dict[int, int] = {}
        self.user_serial = itertools.count()
        #: A setting the server cannot serve was reported (once per process).
        self.refused = False

    def take_ids(self, operator: int, n: int, resume_at: int) -> int:
        """First of ``n`` consecutive fresh ids for ``operator`` in this process.

        Numbering starts at ``resume_at`` (from the server's Welcome), so a new run against a
        server that has seen earlier runs continues above their ids instead of replaying them.
        """
        first = self.next_id.get(operator, resume_at)
        self.next_id[operator] = first + n
        return first


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    state = LocustState()
    environment.cbdc = state  # type: ignore[attr-defined]

    def report(client_id: str, data: dict[str, Any]) -> None:  # worker -> master, every few seconds
        data["cbdc_codes"] = dict(state.codes)
        state.codes.clear()

    def merge(client_id: str, data: dict[str, Any]) -> None:  # on the master
        state.codes.update(data.get("cbdc_codes", {}))

    environment.events.report_to_master.add_listener(report)
    environment.events.worker_report.add_listener(merge)
    app = environment.web_ui.app if environment.web_ui is not None else None
    if app is not None:
        # The running totals for the web UI's users (Locust's own tables count requests, not codes).
        app.add_url_rule("/cbdc/codes", "cbdc_codes", lambda: dict(state.codes))


def _codes_text(codes: collections.Counter[str]) -> str:
    return f"({sum(codes.values())} transfers): " + ", ".join(f"{k} {v}" for k, v in codes.most_common())


@events.test_start.add_listener
def _start_ticker(environment: Environment, **_: Any) -> None:
    """On the master (or a local runner), log the result codes so far every --cbdc-codes-every seconds."""
    every = float(getattr(environment.parsed_options, "cbdc_codes_every", 0) or 0)
    if every <= 0 or isinstance(environment.runner, WorkerRunner):
        return
    state: LocustState = environment.cbdc  # type: ignore[attr-defined]

    def tick() -> None:
        while True:
            gevent.sleep(every)
            if state.codes:
                log.info("cbdc-bench result codes so far %s", _codes_text(state.codes))

    state.ticker = gevent.spawn(tick)


@events.test_stop.add_listener
def _stop_ticker(environment: Environment, **_: Any) -> None:
    state: LocustState = environment.cbdc  # type: ignore[attr-defined]
    if state.ticker is not None:
        state.ticker.kill(block=False)
        state.ticker = None


@events.quitting.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    codes: collections.Counter[str] = environment.cbdc.codes  # type: ignore[attr-defined]
    if not codes:
        return
    log.info("cbdc-bench result codes %s", _codes_text(codes))
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        with open(f"{prefix}_result_codes.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "transfers"])
            w.writerows(codes.most_common())


class PaymentGateway(User):
    """An operator's gateway submitting payment batches to the cbdc-bench server."""

    def wait_time(self) -> float:
        """Seconds between a user's batches: --cbdc-think-ms (default 0: closed loop, no pause)."""
        return float(self.environment.parsed_options.cbdc_think_ms) / 1000

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        state: LocustState = self.environment.cbdc
        runner = self.environment.runner
        self.worker = getattr(runner, "worker_index", 0) if runner is not None else 0
        workers = opts.cbdc_workers or (opts.processes if getattr(opts, "processes", None) else 0)
        workers = (os.cpu_count() or 1) if workers == -1 else max(workers, 1)
        if opts.cbdc_operators % workers:
            raise ValueError(f"--cbdc-operators ({opts.cbdc_operators}) must be a multiple of the workers ({workers})")
        # Operators are split between worker processes (operator = worker mod workers), so one
        # operator's ids are numbered by one process only and stay in order for the server's
        # idempotency window; users of one process that share an operator share its counter.
        serial = next(state.user_serial)
        self.operator = (self.worker % workers + workers * serial) % opts.cbdc_operators
        host, port = parse_host(self.host)
        secrets = load_secrets(opts.cbdc_secrets)
        secret = None if secrets is None else secrets.secret(ROLE_OPERATOR, self.operator)
        try:
            self.client = Client(host, port, operator=self.operator, name=f"locust worker {self.worker}", secret=secret)
        except (OSError, ServerError, ValueError, msgspec.MsgspecError) as exc:
            what = str(exc) or type(exc).__name__
            self._refuse(f"no cbdc-bench session with {host}:{port} ({what}): is `cbdc-bench serve` running there?")
        welcome = self.client.welcome
        assert welcome is not None
        # With ownership enforced, this operator's gateway debits only the accounts it holds.
        payer_range = (welcome.owned_from, welcome.owned_to) if welcome.ownership else None
        if opts.cbdc_batch > welcome.max_batch:
            self._refuse(f"--cbdc-batch {opts.cbdc_batch} exceeds the server's max_batch {welcome.max_batch}")
        if opts.cbdc_profile and opts.cbdc_profile != welcome.profile:
            self._refuse(f"--cbdc-profile {opts.cbdc_profile!r}, but the server runs {welcome.profile!r}")
        accounts = opts.cbdc_accounts or welcome.accounts
        if not 2 <= accounts <= welcome.accounts:
            self._refuse(f"--cbdc-accounts must be in 2..{welcome.accounts} (the server's accounts)")
        # Locust counts requests: one request here is one batch, so its "RPS" is batches per second.
        self.name = f"submit {welcome.profile} x{opts.cbdc_batch} (1 request = {opts.cbdc_batch} payments)"
        workload = Workload(
            WorkloadConfig(accounts=accounts, seed=opts.cbdc_seed), stream=1_000 + self.worker * 10_000 + serial
        )
        self.pool = BatchPool(
            workload, opts.cbdc_pool, opts.cbdc_batch, operator=self.operator, payer_range=payer_range
        )
        self.state = state
        self.resume_at = welcome.next_transfer_id

    def _refuse(self, why: str) -> NoReturn:
        """Stop the whole run on a setting the server cannot serve: one error line, not one traceback per user."""
        state: LocustState = self.environment.cbdc
        if not state.refused:
            state.refused = True
            log.error("cbdc-bench: %s; stopping", why)
        self.environment.process_exit_code = 2
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.environment.runner is not None:
            self.environment.runner.quit()
        raise StopUser()

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    @task
    def submit_batch(self) -> None:
        batch = self.pool.next()
        first = self.state.take_ids(self.operator, len(batch), self.resume_at)
        batch["transfer_id"] = np.arange(first, first + len(batch))
        start = time.perf_counter()
        exception: Exception | None = None
        try:
            codes = self.client.transfer(batch)
        except (ServerError, OSError) as exc:
            exception = exc
            codes = None
        elapsed_ms = (time.perf_counter() - start) * 1000
        if codes is not None:
            counts = name_counts(np.bincount(codes, minlength=len(ResultCode)))
            self.state.codes.update(counts)
            failed = sum(counts.get(c.name.lower(), 0) for c in SYSTEM_FAILURES)
            if failed:
                exception = RuntimeError(
                    f"{failed} of {len(batch)} transfers shed by the server (overloaded/hook_error)"
                )
        self.environment.events.request.fire(
            request_type="CBDC",
            name=self.name,
            response_time=elapsed_ms,
            response_length=batch.nbytes,
            exception=exception,
            context={"operator": self.operator},
        )
        if exception is not None and codes is None:
            self.stop(force=True)
