"""Read queries for one trace: its state and its history. Raw SQL, $n parameters."""

from __future__ import annotations

from datetime import datetime

import asyncpg

TRACE = """
SELECT trace_id, first_at, last_at, event_count, error_count, done, finish_at, status
FROM traces WHERE trace_id = $1
"""

SERVICES = """
SELECT service, first_at, last_at, event_count, latest_status, latest_failed
FROM trace_services WHERE trace_id = $1
ORDER BY first_at, service
"""

# Every event that carries an error: a failed status, error messages or an exception.
ERRORS = """
SELECT ts, service, event_id, status, failed, message, errors, exception
FROM events
WHERE trace_id = $1 AND (failed OR cardinality(errors) > 0 OR exception IS NOT NULL)
ORDER BY ts, event_id
LIMIT 1000
"""

_EVENT_COLUMNS = """event_id, trace_id, service, status, failed, ts, trace_status, start_time, end_time,
       duration_ms, source, account, org_id, inventory_id, system_id, domain, domain_id, username,
       operation, path, message, errors, format"""
_BODY_COLUMNS = ", exception, meta, body"

# Keyset paging on (ts, event_id): stable under concurrent inserts, no OFFSET.
EVENTS_ASC = f"""
SELECT {_EVENT_COLUMNS}{_BODY_COLUMNS} FROM events
WHERE trace_id = $1 AND ($2::timestamptz IS NULL OR (ts, event_id) > ($2, $3))
ORDER BY ts, event_id LIMIT $4
"""
EVENTS_DESC = f"""
SELECT {_EVENT_COLUMNS}{_BODY_COLUMNS} FROM events
WHERE trace_id = $1 AND ($2::timestamptz IS NULL OR (ts, event_id) < ($2, $3))
ORDER BY ts DESC, event_id DESC LIMIT $4
"""
EVENTS_ASC_NO_BODY = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE trace_id = $1 AND ($2::timestamptz IS NULL OR (ts, event_id) > ($2, $3))
ORDER BY ts, event_id LIMIT $4
"""
EVENTS_DESC_NO_BODY = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE trace_id = $1 AND ($2::timestamptz IS NULL OR (ts, event_id) < ($2, $3))
ORDER BY ts DESC, event_id DESC LIMIT $4
"""

TRACE_EXISTS = "SELECT EXISTS (SELECT 1 FROM traces WHERE trace_id = $1)"


async def fetch_trace(conn: asyncpg.Connection, trace_id: str):
    """(trace row, service rows, error rows), or None when the trace is unknown."""
    trace = await conn.fetchrow(TRACE, trace_id)
    if trace is None:
        return None
    services = await conn.fetch(SERVICES, trace_id)
    # Not gated on error_count: an OK event may still carry error messages or an exception.
    errors = await conn.fetch(ERRORS, trace_id)
    return trace, services, errors


async def fetch_events(conn: asyncpg.Connection, trace_id: str, *, descending: bool, include_body: bool,
                       after: tuple[datetime, str] | None, limit: int) -> list[asyncpg.Record]:
    if descending:
        sql = EVENTS_DESC if include_body else EVENTS_DESC_NO_BODY
    else:
        sql = EVENTS_ASC if include_body else EVENTS_ASC_NO_BODY
    ts, event_id = after if after else (None, None)
    return await conn.fetch(sql, trace_id, ts, event_id, limit)


async def trace_exists(conn: asyncpg.Connection, trace_id: str) -> bool:
    return await conn.fetchval(TRACE_EXISTS, trace_id)
