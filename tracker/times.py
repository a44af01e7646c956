"""Reading times: every RFC 3339 date-time (what the OpenAPI document promises), and the
ISO 8601 forms the ancestors' producers send (a space for the T, no zone = UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_LEAP_SECOND = re.compile(r"([T ]\d{2}:\d{2}):60")


def parse_time(value: str) -> datetime:
    """Aware datetime, or ValueError. RFC 3339 allows a lower-case t and z, which
    datetime.fromisoformat does not, and a leap second (:60), which datetime cannot hold:
    it is read as the last instant of that minute."""
    try:
        # What nearly every producer sends, read in C; a leap second or a lower-case t or z
        # (which fromisoformat refuses, or may not) takes the path below.
        if "t" not in value and "z" not in value:
            return _utc(datetime.fromisoformat(value))
    except ValueError:
        pass
    text = value.upper() if ("t" in value or "z" in value) else value
    leap = _LEAP_SECOND.search(text)
    if leap:
        text = _LEAP_SECOND.sub(r"\1:59", text, count=1)
    parsed = datetime.fromisoformat(text)
    if leap:
        parsed = parsed.replace(microsecond=0) + timedelta(seconds=1) - timedelta(microseconds=1)
    return _utc(parsed)


def _utc(parsed: datetime) -> datetime:
    """In UTC: rollup buckets are whole UTC minutes and hours, whatever offset a producer used
    (an hour taken in +05:30 would start at half past in UTC)."""
    if parsed.tzinfo is UTC:
        return parsed
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
