"""Gateways and the open-loop run against a test double of the server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import uvloop

from engine import wire
from engine.behaviours import labels
from engine.codes import ResultCode
from loadgen.generator.gateway import (
    AUTO_TICK_MAX_S,
    SIGNED_AUTO_TICK_MAX_S,
    Gateway,
    LoadConfig,
    run_load,
)
from loadgen.generator.measure import Measurement
from tests.support.wire_double import DoubleServer

MS = 1_000_000


class _FakeTransport:
    """Collects written frames; reports an empty write buffer."""

    def __init__(self) -> None:
        self.reader = wire.FrameReader()
        self.codec = wire.Codec()
        self.messages: list[Any] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.messages += [self.codec.client_decoder.decode(b) for b in self.reader.feed(data)]

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _offline_gateway(**overrides: Any) -> tuple[Gateway, _FakeTransport, Measurement]:
    settings: dict[str, Any] = {
        "rate_tps": 10_000,
        "seconds": 1.0,
        "warmup": 0.0,
        "operators": 2,
        "pool": 2_500,
        "batch_max": 300,
    }
    settings.update(overrides)
    config = LoadConfig(**settings)
    m = config.new_measurement()
    g = Gateway(1, config, m, wire.Codec())
    g.prepare(accounts=5_000)
    transport = _FakeTransport()
    g.transport = transport  # type: ignore[assignment]
    return g, transport, m


def test_gateway_sends_each_scheduled_transfer_once_never_early_and_replays_the_pool() -> None:
    g, transport, m = _offline_gateway()
    sent_until: list[tuple[int, int]] = []
    for now in range(0, 1_100 * MS, 7 * MS):  # ticks at 7 ms, past the end of the schedule
        g.send_due(now)
        sent_until += [(now, m.sent_total)]
    submits = [msg for msg in transport.messages if isinstance(msg, wire.Submit)]
    records = np.concatenate([wire.records_from_bytes(s.transfers) for s in submits])
    n = len(g.schedule)
    assert n == 5_000  # gateway 1 of 2 at 10,000/s for 1 s
    assert len(records) == n == m.sent_total
    assert [s.seq for s in submits] == list(range(len(submits)))
    assert max(len(wire.records_from_bytes(s.transfers)) for s in submits) <= 300
    assert set(records["operator"].tolist()) == {1}
    # Never early: by each tick, exactly the transfers scheduled up to that tick had been sent.
    for now, total in sent_until:
        assert total == int(np.searchsorted(g.schedule, now, side="right"))
    # Pool replay: pass k carries the pool's ids + k * pool size, and odd passes swap payer/payee.
    # Pool replay: pass k carries the pool's ids + k * pool size, odd passes swap payer/payee, and
    # every pass plants the behaviours its own ids carry (their labels hold in every pass).
    assert g._replay is not None
    pool = g._replay.take(0, 2_500)
    behaviours, seed = g.config.workload.behaviours, g.config.seed
    for k in range(2):
        part = records[k * 2_500 : (k + 1) * 2_500]
        np.testing.assert_array_equal(part["transfer_id"], pool["transfer_id"] + k * 2_500)
        ordinary = (labels(behaviours, seed, part["transfer_id"]) | labels(behaviours, seed, pool["transfer_id"])) == 0
        payer, payee = ("payee", "payer") if k % 2 else ("payer", "payee")
        np.testing.assert_array_equal(part["payer"][ordinary], pool[payer][ordinary])
        np.testing.assert_array_equal(part["payee"][ordinary], pool[payee][ordinary])
        assert ordinary.mean() > 0.98
    # The pool holds the workload's deliberate duplicates (ids repeated within a pass).
    assert len(np.unique(pool["transfer_id"])) < len(pool)
    # Record timestamps follow the simulated business clock, in schedule order.
    assert np.all(np.diff(records["timestamp_ns"]) >= 0)
    assert g.pending and m.results_total == 0


def test_the_auto_tick_of_a_signed_load_is_capped_shorter_and_an_explicit_tick_wins() -> None:
    # Signed rates (tens of thousands a second) are far below ~1,000 transfers a frame: the cap applies.
    signed = LoadConfig(rate_tps=19_000, signed=True)
    unsigned = LoadConfig(rate_tps=19_000)
    assert signed.tick_ns == int(SIGNED_AUTO_TICK_MAX_S * 1e9) < unsigned.tick_ns == int(AUTO_TICK_MAX_S * 1e9)
    assert signed.late_ns == signed.tick_ns + 2 * MS  # lateness is judged against the tick in force
    # Where frames of ~1,000 transfers come sooner than either cap, signed or not makes no difference.
    assert LoadConfig(rate_tps=1_000_000, signed=True).tick_ns == LoadConfig(rate_tps=1_000_000).tick_ns == 2 * MS
    assert LoadConfig(rate_tps=19_000, signed=True, tick_us=5_000).tick_ns == 5 * MS


def test_every_transfer_sent_gets_exactly_one_result_counted() -> None:
    g, transport, m = _offline_gateway(warmup=0.2)
    g.send_due(2_000 * MS)
    submits = [msg for msg in transport.messages if isinstance(msg, wire.Submit)]
    codes_of = {}
    for s in submits:
        n = len(wire.records_from_bytes(s.transfers))
        codes = np.full(n, ResultCode.OK, dtype=np.uint8)
        codes[::10] = ResultCode.INSUFFICIENT_FUNDS
        codes_of[s.seq] = codes
    for s in reversed(submits):  # replies may come in any order
        g.on_message(wire.Results(seq=s.seq, codes=codes_of[s.seq].tobytes(), commit_ns=0), 2_100 * MS)
    # A repeated or unknown reply is a protocol error, never a second count.
    g.on_message(wire.Results(seq=submits[0].seq, codes=codes_of[submits[0].seq].tobytes(), commit_ns=0), 0)
    g.on_message(wire.Results(seq=10_000, codes=b"\0", commit_ns=0), 0)
    assert m.protocol_errors == 2
    assert m.results_total == m.sent_total == len(g.schedule) == int(m.completed.sum())
    assert not g.pending and g.done
    measured = int((g.schedule >= 200 * MS).sum())
    assert m.latency.total == measured == sum(m.code_counts().values())
    assert m.code_counts()["insufficient_funds"] > 0


def test_unanswered_and_unsent_transfers_are_counted_and_kept_in_the_latency() -> None:
    g, _, m = _offline_gateway()
    g.send_due(500 * MS)  # half the schedule sent, no replies
    sent = m.sent_total
    g.finish(3_000 * MS)
    assert m.unanswered == sent
    assert m.unsent == len(g.schedule) - sent
    assert m.latency.total == len(g.schedule)
    # Censored at the end of the run: a lower bound of at least 2 s for every one of them.
    assert m.latency.value_at(0.0) >= 2_000 * MS


def _run(config: LoadConfig, on_start: Any = None) -> tuple[Measurement, list[str], dict[str, Any]]:
    return uvloop.run(run_load(config, on_start=on_start))


def test_open_loop_run_against_a_server_accounts_for_every_transfer() -> None:
    with DoubleServer(accounts=5_000) as server:
        config = LoadConfig(port=server.port, rate_tps=8_000, seconds=1.0, warmup=0.3, operators=3, pool=2_000)
        m, failures, welcome = _run(config)
        seen = {op: np.concatenate(ids) for op, ids in server.seen_ids.items() if ids}
    assert failures == []
    assert welcome["accounts"] == 5_000
    assert m.scheduled == 10_400
    assert m.sent_total == m.results_total == m.scheduled == server.transfers
    assert m.unanswered == m.unsent == m.protocol_errors == 0
    assert m.latency.total == m.scheduled_measured == m.code_counts()["ok"]
    assert int(m.sent.sum()) == int(m.completed.sum()) == m.scheduled
    assert sorted(seen) == [0, 1, 2]


def test_latency_is_measured_from_the_schedule_so_a_generator_stall_is_not_omitted() -> None:
    """Coordinated omission: while the generator is stalled, payments fall due but are not sent.

    Timed from the actual send they would look fast; timed from their schedule, each carries the
    stall. The stall is a 300 ms blocking call in the generator's own event loop.
    """
    stall_s = 0.3
    rate = 10_000
    with DoubleServer(accounts=5_000) as server:
        config = LoadConfig(port=server.port, rate_tps=rate, seconds=1.2, warmup=0.0, operators=1, tick_us=2_000)

        def on_start(start_ns: int) -> None:
            loop = asyncio.get_running_loop()
            delay = (start_ns - time.monotonic_ns()) / 1e9 + 0.5
            loop.call_later(delay, time.sleep, stall_s)

        m, failures, _ = _run(config, on_start)
    assert failures == []
    assert m.results_total == m.scheduled
    # The send lag shows the stall...
    assert m.send_lag.max_ns >= 0.9 * stall_s * 1e9
    assert m.late > 0
    # ...and the latency from schedule carries it: payments due in the first 2/3 of the stall
    # waited more than 100 ms (a from-send measurement would show none above a few ms).
    assert m.latency.max_ns >= 0.9 * stall_s * 1e9
    assert m.latency.count_above(100 * MS) >= 0.8 * rate * (stall_s - 0.1)


def test_a_slow_server_queues_and_the_generator_keeps_sending_on_schedule() -> None:
    """Open loop: the server serves half the offered frames; sends stay on schedule regardless."""
    with DoubleServer(accounts=5_000, service_s=0.02) as server:
        # One gateway, one frame every 10 ms; the server needs 20 ms per frame.
        config = LoadConfig(
            port=server.port, rate_tps=10_000, seconds=1.5, warmup=0.0, operators=1, tick_us=10_000, drain=5.0
        )
        m, failures, _ = _run(config)
    assert failures == []
    assert m.unsent == 0
    assert m.sent_total == m.scheduled
    # The generator did not wait for replies: its send lag stayed far below the queueing delay.
    assert m.send_lag.value_at(99.0) < 100 * MS
    # Every payment waited at least one service time; late ones waited for the whole queue.
    assert m.latency.value_at(0.0) >= 20 * MS
    assert m.latency.max_ns >= 1_000 * MS
    # Achieved throughput inside the window is about half the offered rate.
    assert m.window_completed < 0.75 * m.scheduled_measured


def test_several_generator_processes_merge_their_histograms() -> None:
    with DoubleServer(accounts=5_000) as server:
        config = LoadConfig(
            port=server.port, rate_tps=6_000, seconds=1.0, warmup=0.2, operators=2, processes=2, pool=2_000
        )
        m, failures, _ = _run(config)
        transfers = server.transfers
    assert failures == []
    assert m.sent_total == m.results_total == m.scheduled == transfers == 7_200
    assert m.latency.total == m.scheduled_measured == 6_000
    per_second_total = sum(h.total for h in m.per_second if h is not None)
    assert per_second_total == m.results_total
    assert m.generator_cpu_s > 0
