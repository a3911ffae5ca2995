"""The final probe waits for a trove flush running at the drain's end (issue 21): the result then
records the flushes finished by the run's end, which price a window's trove rows
(``loadgen.plan.inputs.trove_window_ns``)."""

from __future__ import annotations

import asyncio
from typing import Any

from loadgen.generator.gateway import GatewayError
from loadgen.harness.measured import _flush_ended


class FakeAdmin:
    """Server stats in turn (the last one repeats); an exception in the list is raised."""

    def __init__(self, replies: list[dict[str, Any] | Exception]) -> None:
        self.replies = replies
        self.calls = 0

    async def stats(self) -> dict[str, Any]:
        reply = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        if isinstance(reply, Exception):
            raise reply
        return reply


def _wait(admin: FakeAdmin, timeout_s: float = 30.0, flushes: int = 0) -> None:
    asyncio.run(_flush_ended(admin, flushes, timeout_s=timeout_s))  # type: ignore[arg-type]


def test_it_polls_until_the_flush_has_ended() -> None:
    running = {"trove": {"flushing_rows": 4_000_000}}
    admin = FakeAdmin([running, running, running, {"trove": {"flushing_rows": 0}}])
    _wait(admin)
    assert admin.calls == 4


def test_no_trove_no_flush_a_stopped_trove_or_a_failed_probe_return_at_once() -> None:
    for reply in (
        {},
        {"trove": {"flushing_rows": 0}},
        {"trove": {"flushing_rows": 9, "failure": "disk full"}},
        GatewayError("gone"),
    ):
        admin = FakeAdmin([reply])
        _wait(admin)
        assert admin.calls == 1, reply


def test_a_flush_that_never_ends_is_waited_for_no_longer_than_the_timeout() -> None:
    admin = FakeAdmin([{"trove": {"flushing_rows": 1}}])
    _wait(admin, timeout_s=0.35)
    assert 1 <= admin.calls <= 6


def test_it_waits_for_the_flushes_asked_for() -> None:
    replies: list[dict[str, Any] | Exception] = [{"trove": {"flushing_rows": 0, "flushes": n}} for n in (0, 1, 1, 2)]
    admin = FakeAdmin(replies)
    _wait(admin, flushes=2)
    assert admin.calls == 4
