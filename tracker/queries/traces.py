"""Read queries for one trace: its state and its history. Raw SQL, $n parameters."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from tracker.db import Connection
from tracker.events import BODY_COLUMNS, SUMMARY_COLUMNS
from tracker.tenants import Tenants


def _events_sql(*, descending: bool, include_body: bool) -> str:
    comparison, direction = ("<", " DESC") if descending else (">", "")
    columns = ", ".join(SUMMARY_COLUMNS + (BODY_COLUMNS if include_body else ()))
    return f"""
SELECT {columns} FROM events
WHERE trace_id = $1 AND ts >= (SELECT first_at FROM traces WHERE trace_id = $1)
  AND ts <= (SELECT last_at FROM traces WHERE trace_id = $1)
  AND ($2::timestamptz IS NULL OR (ts, event_id) {comparison} ($2, $3))
ORDER BY ts{direction}, event_id{direction} LIMIT $4
"""


# Keyset paging on (ts, event_id): stable under concurrent inserts, no OFFSET.
# The trace's first/last times bound ts so that only its days' partitions are read.
# Four constant statements (order x body), built once.
EVENTS_SQL = {
    (descending, body): _events_sql(descending=descending, include_body=body)
    for descending in (False, True)
    for body in (False, True)
}

TRACE_EXISTS = "SELECT EXISTS (SELECT 1 FROM traces WHERE trace_id = $1)"


# The whole GET /v1/traces/{id} document, rendered by PostgreSQL (UTC session):
# the TraceState of swagger/openapi.yaml. Rendering it here instead of building
# dicts in Python took a third off the request (bench/query).
TRACE_DOCUMENT = """
SELECT json_build_object(
    'trace_id', t.trace_id, 'done', t.done, 'status', t.status,
    'first_seen', t.first_at, 'last_seen', t.last_at,
    'elapsed_seconds', extract(epoch FROM t.last_at - t.first_at),
    'finished_at', t.finish_at, 'event_count', t.event_count, 'error_count', t.error_count,
    'services', (
        SELECT coalesce(json_agg(json_build_object(
                   'service', s.service, 'first_seen', s.first_at, 'last_seen', s.last_at,
                   'elapsed_seconds', extract(epoch FROM s.last_at - s.first_at),
                   'latest_status', s.latest_status, 'failed', s.latest_failed, 'event_count', s.event_count)
               ORDER BY s.first_at, s.service), '[]')
        FROM trace_services s WHERE s.trace_id = t.trace_id),
    'errors', (
        SELECT coalesce(json_agg(json_build_object(
                   'timestamp', e.ts, 'service', e.service, 'event_id', e.event_id, 'message', m.msg)
               ORDER BY e.ts, e.event_id, m.ord), '[]')
        FROM (SELECT * FROM events e
              WHERE e.trace_id = t.trace_id AND e.ts >= t.first_at AND e.ts <= t.last_at
                AND (e.failed OR cardinality(e.errors) > 0 OR e.exception IS NOT NULL)
              ORDER BY e.ts, e.event_id LIMIT 1000) e,
        LATERAL (
            -- a failed event's message first, then its error messages, then its exception;
            -- a failure with no words still gets one line
            SELECT e.message AS msg, 0::bigint AS ord WHERE e.failed AND e.message IS NOT NULL
            UNION ALL SELECT x, n FROM unnest(e.errors) WITH ORDINALITY AS u(x, n)
            UNION ALL SELECT e.exception, 2147483647 WHERE e.exception IS NOT NULL
            UNION ALL SELECT e.service || ' reported status ' || quote_literal(e.status), 0
                WHERE e.failed AND e.message IS NULL AND cardinality(e.errors) = 0 AND e.exception IS NULL
        ) m)
)::text
FROM traces t WHERE t.trace_id = $1
"""
# The same for a token bound to tenants: one statement, so a bound token's lookup costs what
# an unbound one's does (bench/query prints both).
TRACE_DOCUMENT_OF_TENANTS = TRACE_DOCUMENT.rstrip() + " AND " + Tenants().fragment("t").format("$2", "$3", "$4", "$5")


async def fetch_trace_document(conn: Connection, trace_id: str, tenants: Tenants | None = None) -> str | None:
    """The JSON text of the trace's state, or None when the trace is unknown (or, for a token
    bound to ``tenants``, carries none of them)."""
    if tenants is None:
        return await conn.fetchval(TRACE_DOCUMENT, trace_id)
    return await conn.fetchval(TRACE_DOCUMENT_OF_TENANTS, trace_id, *tenants.values())


async def fetch_events(
    conn: Connection,
    trace_id: str,
    *,
    descending: bool,
    include_body: bool,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[asyncpg.Record]:
    sql = EVENTS_SQL[(descending, include_body)]
    ts, event_id = after if after else (None, None)
    return await conn.fetch(sql, trace_id, ts, event_id, limit)


async def trace_exists(conn: Connection, trace_id: str) -> bool:
    return await conn.fetchval(TRACE_EXISTS, trace_id)
