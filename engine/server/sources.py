"""Connections per source address before the handshake: who is evicted, and how fast one may connect.

Issue 13: ``max_unauthenticated`` bounds the connections that have not completed the handshake,
and at the bound a new connection closed the *oldest* waiting one. A client that churns (opens
connections as fast as it can and never says Hello) then evicted every other client's connection
before its handshake could finish: with 64 slots and 1,000 new connections a second, anyone
needing more than 64 ms for Hello, Challenge and Authenticate never got in. Two rules, counted per
source address:

* Eviction takes the oldest waiting connection *of the address holding the most waiting
  connections*: a churning address evicts its own connections, not other clients'.
* Optionally (``connect_rate_per_source``), a token bucket per address (burst
  ``max_unauthenticated``) refuses new connections beyond the rate at once. Off by default: every
  load generator connects from 127.0.0.1, and a server behind a proxy sees one address for all.

What this does not stop: a client with many addresses (one waiting connection each) looks like
many clients; ``max_connections``, the handshake timeout and a firewall's own limits bound it.
The bucket table holds at most ``MAX_TRACKED_SOURCES`` addresses (the fullest buckets, those
that have not connected for the longest, are dropped first), so it cannot grow without bound.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Protocol

#: Most source addresses whose connect rate is tracked at once.
MAX_TRACKED_SOURCES = 4_096


class Waiting(Protocol):
    """A connection that has not completed the handshake (``engine.server.connection.Connection``)."""

    source: str
    connected_at: float


def eviction_victim(waiting: Iterable[Waiting]) -> Waiting | None:
    """The oldest waiting connection of the source address with the most waiting connections."""
    by_source: dict[str, list[Waiting]] = collections.defaultdict(list)
    for conn in waiting:
        by_source[conn.source].append(conn)
    if not by_source:
        return None
    busiest = max(by_source.values(), key=lambda conns: (len(conns), -min(c.connected_at for c in conns)))
    return min(busiest, key=lambda c: c.connected_at)


class ConnectRate:
    """A token bucket of new connections per source address; ``rate_per_s`` 0 = unlimited."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        #: address -> (tokens, monotonic time of the last update), least recently used first.
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        """Take a token for a new connection from ``source``; False if its bucket is empty."""
        if self.rate_per_s <= 0:
            return True
        tokens, last = self._buckets.pop(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - allowed, now)
        if len(self._buckets) > MAX_TRACKED_SOURCES:
            self._buckets.popitem(last=False)  # the address idle longest: its bucket has refilled most
        return allowed
