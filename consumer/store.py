"""Write one batch of events and the trace state they imply, in one transaction.

Idempotent by event id: only rows actually inserted feed the trace state, so a
redelivered batch changes nothing, and every merge below (least, greatest,
sum, latest by (ts, event_id)) is commutative, so the state does not depend on
the order in which events arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from tracker.events import Event

COLUMNS = (
    "event_id", "trace_id", "service", "status", "failed", "ts", "trace_status", "start_time", "end_time",
    "duration_ms", "source", "account", "org_id", "inventory_id", "system_id", "domain", "domain_id",
    "username", "operation", "path", "message", "errors", "exception", "meta", "body", "format",
)
_COLS = ", ".join(COLUMNS)

# Per connection; ON COMMIT DELETE ROWS empties it at the end of every batch.
CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS staging_events (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)

# One statement: insert the new events, then fold only the rows really
# inserted (RETURNING) into trace_services and traces. Rows are grouped per
# key and sorted so that concurrent consumers lock rows in the same order.
UPSERT_BATCH = f"""
WITH new AS (
    INSERT INTO events ({_COLS})
    SELECT {_COLS} FROM staging_events
    ON CONFLICT (event_id) DO NOTHING
    RETURNING trace_id, service, ts, event_id, status, failed, trace_status
),
per_service AS (
    SELECT trace_id, service, min(ts) AS first_at, max(ts) AS last_at, count(*) AS n,
           (array_agg(ts ORDER BY ts DESC, event_id DESC))[1] AS latest_at,
           (array_agg(event_id ORDER BY ts DESC, event_id DESC))[1] AS latest_event_id,
           (array_agg(status ORDER BY ts DESC, event_id DESC))[1] AS latest_status,
           (array_agg(failed ORDER BY ts DESC, event_id DESC))[1] AS latest_failed
    FROM new GROUP BY trace_id, service
),
services AS (
    INSERT INTO trace_services AS s (trace_id, service, first_at, last_at, event_count,
                                     latest_at, latest_event_id, latest_status, latest_failed)
    SELECT trace_id, service, first_at, last_at, n, latest_at, latest_event_id, latest_status, latest_failed
    FROM per_service ORDER BY trace_id, service
    ON CONFLICT (trace_id, service) DO UPDATE SET
        first_at = LEAST(s.first_at, EXCLUDED.first_at),
        last_at = GREATEST(s.last_at, EXCLUDED.last_at),
        event_count = s.event_count + EXCLUDED.event_count,
        latest_at = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_event_id) > (s.latest_at, s.latest_event_id)
                         THEN EXCLUDED.latest_at ELSE s.latest_at END,
        latest_event_id = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_event_id) > (s.latest_at, s.latest_event_id)
                         THEN EXCLUDED.latest_event_id ELSE s.latest_event_id END,
        latest_status = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_event_id) > (s.latest_at, s.latest_event_id)
                         THEN EXCLUDED.latest_status ELSE s.latest_status END,
        latest_failed = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_event_id) > (s.latest_at, s.latest_event_id)
                         THEN EXCLUDED.latest_failed ELSE s.latest_failed END
),
per_trace AS (
    SELECT trace_id, min(ts) AS first_at, max(ts) AS last_at, count(*) AS n,
           count(*) FILTER (WHERE failed) AS n_failed,
           coalesce(bool_or(trace_status = 'FINISHED'), false) AS done,
           (array_agg(ts ORDER BY ts DESC, event_id DESC) FILTER (WHERE trace_status = 'FINISHED'))[1] AS finish_at,
           (array_agg(event_id ORDER BY ts DESC, event_id DESC) FILTER (WHERE trace_status = 'FINISHED'))[1]
               AS finish_event_id,
           (array_agg(failed ORDER BY ts DESC, event_id DESC) FILTER (WHERE trace_status = 'FINISHED'))[1]
               AS finish_failed
    FROM new GROUP BY trace_id
),
traces_upserted AS (
INSERT INTO traces AS t (trace_id, first_at, last_at, event_count, error_count, done,
                         finish_at, finish_event_id, finish_failed, status)
SELECT trace_id, first_at, last_at, n, n_failed, done, finish_at, finish_event_id, finish_failed, 'in_progress'
FROM per_trace ORDER BY trace_id
ON CONFLICT (trace_id) DO UPDATE SET
    first_at = LEAST(t.first_at, EXCLUDED.first_at),
    last_at = GREATEST(t.last_at, EXCLUDED.last_at),
    event_count = t.event_count + EXCLUDED.event_count,
    error_count = t.error_count + EXCLUDED.error_count,
    done = t.done OR EXCLUDED.done,
    finish_at = CASE WHEN EXCLUDED.finish_at IS NOT NULL AND (t.finish_at IS NULL
                     OR (EXCLUDED.finish_at, EXCLUDED.finish_event_id) > (t.finish_at, t.finish_event_id))
                     THEN EXCLUDED.finish_at ELSE t.finish_at END,
    finish_event_id = CASE WHEN EXCLUDED.finish_at IS NOT NULL AND (t.finish_at IS NULL
                     OR (EXCLUDED.finish_at, EXCLUDED.finish_event_id) > (t.finish_at, t.finish_event_id))
                     THEN EXCLUDED.finish_event_id ELSE t.finish_event_id END,
    finish_failed = CASE WHEN EXCLUDED.finish_at IS NOT NULL AND (t.finish_at IS NULL
                     OR (EXCLUDED.finish_at, EXCLUDED.finish_event_id) > (t.finish_at, t.finish_event_id))
                     THEN EXCLUDED.finish_failed ELSE t.finish_failed END
)
SELECT count(*) FROM new
"""

# The overall status needs every service's latest event, not only this
# batch's, so it is recomputed for the touched traces after the upsert above.
REFRESH_STATUS = """
UPDATE traces t SET
    status = CASE
        WHEN t.done THEN CASE WHEN t.finish_failed THEN 'failed' ELSE 'success' END
        WHEN EXISTS (SELECT 1 FROM trace_services s WHERE s.trace_id = t.trace_id AND s.latest_failed)
            THEN 'failed'
        ELSE 'in_progress' END,
    updated_at = now()
WHERE t.trace_id = ANY($1::text[])
"""


@dataclass(frozen=True)
class BatchResult:
    inserted: int      # new events
    duplicates: int    # events already stored (redelivery, or the same event sent twice)


def event_record(event: Event) -> tuple:
    return (
        event.event_id, event.trace_id, event.service, event.status, event.failed, event.timestamp,
        event.trace_status, event.start_time, event.end_time, event.duration_ms, event.source, event.account,
        event.org_id, event.inventory_id, event.system_id, event.domain, event.domain_id, event.user,
        event.operation, event.path, event.message, list(event.errors), event.exception, event.meta,
        event.body, event.format,
    )


async def prepare_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(CREATE_STAGING)


async def write_batch(conn: asyncpg.Connection, events: Sequence[Event]) -> BatchResult:
    """Store ``events`` and fold them into the trace state; one transaction."""
    if not events:
        return BatchResult(0, 0)
    async with conn.transaction():
        await conn.copy_records_to_table("staging_events", records=[event_record(e) for e in events],
                                         columns=COLUMNS)
        inserted = await conn.fetchval(UPSERT_BATCH)
        await conn.execute(REFRESH_STATUS, sorted({e.trace_id for e in events}))
    return BatchResult(inserted, len(events) - inserted)
