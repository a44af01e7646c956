"""Query parameters the spec types as strings but we must understand: times, durations, windows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import overload

from tracker.api.problems import bad_request
from tracker.times import parse_time

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Every duration the spec's pattern allows is accepted: one longer than any data is old
# means "all of it" (windows start at the epoch at the earliest), so there is no upper
# bound to state — only Python's own, which this stays below.
_LONGEST = timedelta(days=999_999_000)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@overload
def duration(value: str, name: str) -> timedelta: ...
@overload
def duration(value: None, name: str) -> None: ...
@overload
def duration(value: str | None, name: str) -> timedelta | None: ...
def duration(value: str | None, name: str) -> timedelta | None:
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match:
        raise bad_request(
            f"{name}: {value!r} is not a duration; use a number and a unit: ms, s, m, h or d "
            "(e.g. 250ms, 1.5s, 30m, 24h, 7d)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return min(timedelta(seconds=min(seconds, _LONGEST.total_seconds())), _LONGEST)


def before(end: datetime, span: timedelta) -> datetime:
    """``end - span``, but not before the epoch (nothing the tracker stores is older; and
    Python's datetime ends at year 1). A window ending before the epoch is empty anyway."""
    floor = min(EPOCH, end)
    return end - span if span < end - floor else floor


def time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise bad_request(f"{name}: {value!r} is not an ISO 8601 time; use e.g. 2024-05-01T12:00:00Z") from None


def window(since: str | None, until: str | None, lookback: str | None) -> tuple[datetime | None, datetime | None]:
    """(since, until) from since/until or lookback; both optional."""
    if lookback is not None and since is not None:
        raise bad_request("give either lookback or since, not both")
    start, end = time(since, "since"), time(until, "until")
    span = duration(lookback, "lookback")
    if span is not None:
        start = before(end or datetime.now(UTC), span)
    if start is not None and end is not None and start > end:
        raise bad_request(f"the window is empty: since ({start.isoformat()}) is after until ({end.isoformat()})")
    return start, end
