"""Read queries for one trace: its state and its history. Raw SQL, $n parameters."""

from __future__ import annotations

from datetime import datetime

import asyncpg

# One round trip: the trace row, its services and its error events as JSON.
# The ts bounds from the trace row let PostgreSQL prune the events partitions
# at run time instead of probing every day's index.
TRACE_STATE = """
SELECT t.trace_id, t.first_at, t.last_at, t.event_count, t.error_count, t.done, t.finish_at, t.status,
    (SELECT coalesce(json_agg(json_build_object(
                'service', s.service, 'first_at', s.first_at, 'last_at', s.last_at,
                'event_count', s.event_count, 'latest_status', s.latest_status, 'latest_failed', s.latest_failed)
            ORDER BY s.first_at, s.service), '[]')
     FROM trace_services s WHERE s.trace_id = t.trace_id) AS services,
    (SELECT coalesce(json_agg(json_build_object(
                'ts', e.ts, 'service', e.service, 'event_id', e.event_id, 'status', e.status, 'failed', e.failed,
                'message', e.message, 'errors', e.errors, 'exception', e.exception)
            ORDER BY e.ts, e.event_id), '[]')
     FROM (SELECT * FROM events e
           WHERE e.trace_id = t.trace_id AND e.ts >= t.first_at AND e.ts <= t.last_at
             AND (e.failed OR cardinality(e.errors) > 0 OR e.exception IS NOT NULL)
           ORDER BY e.ts, e.event_id LIMIT 1000) e) AS errors
FROM traces t WHERE t.trace_id = $1
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
# The trace's first/last times bound ts so that only its days' partitions are read.
EVENTS_ASC = f"""
SELECT {_EVENT_COLUMNS}{_BODY_COLUMNS} FROM events
WHERE trace_id = $1 AND ts >= (SELECT first_at FROM traces WHERE trace_id = $1)
  AND ts <= (SELECT last_at FROM traces WHERE trace_id = $1) AND ($2::timestamptz IS NULL OR (ts, event_id) > ($2, $3))
ORDER BY ts, event_id LIMIT $4
"""
EVENTS_DESC = f"""
SELECT {_EVENT_COLUMNS}{_BODY_COLUMNS} FROM events
WHERE trace_id = $1 AND ts >= (SELECT first_at FROM traces WHERE trace_id = $1)
  AND ts <= (SELECT last_at FROM traces WHERE trace_id = $1) AND ($2::timestamptz IS NULL OR (ts, event_id) < ($2, $3))
ORDER BY ts DESC, event_id DESC LIMIT $4
"""
EVENTS_ASC_NO_BODY = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE trace_id = $1 AND ts >= (SELECT first_at FROM traces WHERE trace_id = $1)
  AND ts <= (SELECT last_at FROM traces WHERE trace_id = $1) AND ($2::timestamptz IS NULL OR (ts, event_id) > ($2, $3))
ORDER BY ts, event_id LIMIT $4
"""
EVENTS_DESC_NO_BODY = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE trace_id = $1 AND ts >= (SELECT first_at FROM traces WHERE trace_id = $1)
  AND ts <= (SELECT last_at FROM traces WHERE trace_id = $1) AND ($2::timestamptz IS NULL OR (ts, event_id) < ($2, $3))
ORDER BY ts DESC, event_id DESC LIMIT $4
"""

TRACE_EXISTS = "SELECT EXISTS (SELECT 1 FROM traces WHERE trace_id = $1)"


async def fetch_trace(conn: asyncpg.Connection, trace_id: str):
    """The trace row with ``services`` and ``errors`` as decoded JSON lists, or None when unknown."""
    return await conn.fetchrow(TRACE_STATE, trace_id)


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
