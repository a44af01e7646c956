"""Opaque keyset cursors: base64url of the last row's (time, key) — (ts, event_id) for events,
(created_at, trace_id) for traces, (received_at, id) for dead letters."""

from __future__ import annotations

import base64
import json
from datetime import datetime


class BadCursor(ValueError):
    pass


def encode(ts: datetime, key: str | int) -> str:
    raw = json.dumps([ts.isoformat(), str(key)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, key = json.loads(raw)
        parsed = datetime.fromisoformat(ts)
        if parsed.tzinfo is None or not isinstance(key, str):
            raise ValueError
        return parsed, key
    except (ValueError, TypeError):
        raise BadCursor(_NOT_OURS) from None


def decode_numbered(cursor: str) -> tuple[datetime, int]:
    """A cursor whose key is a row number (a bigint id) rather than a text id."""
    ts, key = decode(cursor)
    if not (key.isdigit() and len(key) <= 18):  # within bigint
        raise BadCursor(_NOT_OURS)
    return ts, int(key)


_NOT_OURS = (
    "cursor is not one this API returned; pass next_cursor from the previous page unchanged, "
    "or leave it out to start at the first page"
)
