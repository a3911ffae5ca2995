"""The simulated clock's epoch and time zone: the one place that maps ``timestamp_ns`` to dates.

A transfer's ``timestamp_ns`` is nanoseconds since the Unix epoch (UTC) on the simulated clock
(the workload starts it at 2026-11-22 08:00 China Standard Time and advances it per payment).
Days, hours and every time people read or type (the trove's ISO 8601 times) are in China
Standard Time, UTC+8, which has no daylight saving time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

NS_PER_SECOND = 10**9
NS_PER_HOUR = 3_600 * NS_PER_SECOND
NS_PER_DAY = 24 * NS_PER_HOUR
#: China Standard Time is UTC+8 all year.
CST_OFFSET_NS = 8 * NS_PER_HOUR
CST = timezone(timedelta(hours=8), "CST")


def iso_cst(timestamp_ns: int) -> str:
    """``timestamp_ns`` as ISO 8601 in China Standard Time, microseconds kept when non-zero."""
    seconds, ns = divmod(int(timestamp_ns), NS_PER_SECOND)
    moment = datetime.fromtimestamp(seconds, CST).replace(microsecond=ns // 1_000)
    return moment.isoformat()


def parse_time(text: str) -> int:
    """Unix ns of an ISO 8601 time; a time without an offset is China Standard Time.

    A bare integer is taken as ns already. ValueError names the accepted forms.
    """
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use ISO 8601 such as 2026-11-22T08:00 (China Standard Time unless an "
            "offset is given, e.g. 2026-11-22T00:00+00:00) or integer unix nanoseconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CST)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1_000


def cst_day(timestamp_ns: int) -> int:
    """Day number (days since 1970-01-01) in China Standard Time."""
    return (timestamp_ns + CST_OFFSET_NS) // NS_PER_DAY
