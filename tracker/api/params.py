"""Query parameters the spec types as strings but we must understand: times, durations, windows."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from tracker.api.problems import bad_request

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW = timedelta(days=3660)


def duration(value: str | None, name: str) -> timedelta | None:
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match:
        raise bad_request(f"{name}: {value!r} is not a duration; use a number and a unit: ms, s, m, h or d "
                          "(e.g. 250ms, 1.5s, 30m, 24h, 7d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_WINDOW.total_seconds():
        raise bad_request(f"{name}: {value!r} is longer than the longest allowed, {MAX_WINDOW.days} days")
    return timedelta(seconds=seconds)


def time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"{name}: {value!r} is not an ISO 8601 time; use e.g. 2024-05-01T12:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def window(since: str | None, until: str | None, lookback: str | None) -> tuple[datetime | None, datetime | None]:
    """(since, until) from since/until or lookback; both optional."""
    if lookback is not None and since is not None:
        raise bad_request("give either lookback or since, not both")
    start, end = time(since, "since"), time(until, "until")
    span = duration(lookback, "lookback")
    if span is not None:
        start = (end or datetime.now(timezone.utc)) - span
    if start is not None and end is not None and start > end:
        raise bad_request(f"the window is empty: since ({start.isoformat()}) is after until ({end.isoformat()})")
    return start, end
