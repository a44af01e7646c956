"""Write one batch of events and the trace state they imply, in one transaction.

Idempotent by event id: only rows actually inserted feed the trace state, so a
redelivered batch changes nothing, and every merge below (least, greatest,
sum, latest by (ts, event_id)) is commutative, so the state does not depend on
the order in which events arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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

# Lock the trace state rows this batch touches, in key order (no deadlocks
# between consumers). The statement after it then reads their current values
# as "before" and computes exact histogram corrections from them.
LOCK_STATE = """
WITH t AS (SELECT trace_id FROM traces WHERE trace_id IN (SELECT trace_id FROM staging_events)
           ORDER BY trace_id FOR UPDATE),
     s AS (SELECT trace_id FROM trace_services WHERE (trace_id, service) IN
               (SELECT trace_id, service FROM staging_events) ORDER BY trace_id, service FOR UPDATE)
SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM s)
"""

_OUTCOME = "status = 'success' OR failed"
_LATEST = "ORDER BY ts DESC, event_id DESC"
_FIRST = "ORDER BY ts, event_id"

# One statement: insert the new events, then fold only the rows really
# inserted (RETURNING) into trace_services, traces and the rollups. All
# merges are commutative, so arrival order does not matter; histogram
# entries whose value changed are moved (-1 old bin, +1 new bin).
UPSERT_BATCH = f"""
WITH new AS (
    INSERT INTO events ({_COLS})
    SELECT {_COLS} FROM staging_events
    ON CONFLICT (event_id, ts) DO NOTHING
    RETURNING trace_id, service, ts, event_id, status, failed, trace_status, start_time,
              account, org_id, inventory_id, system_id, source, domain, domain_id
),
per_service AS (
    SELECT trace_id, service, min(ts) AS first_at, max(ts) AS last_at, count(*) AS n,
           (array_agg(ts {_LATEST}))[1] AS latest_at,
           (array_agg(event_id {_LATEST}))[1] AS latest_event_id,
           (array_agg(status {_LATEST}))[1] AS latest_status,
           (array_agg(failed {_LATEST}))[1] AS latest_failed,
           min(LEAST(ts, coalesce(start_time, ts))) AS start_at,
           (array_agg(ts {_FIRST}) FILTER (WHERE {_OUTCOME}))[1] AS outcome_at,
           (array_agg(event_id {_FIRST}) FILTER (WHERE {_OUTCOME}))[1] AS outcome_event_id,
           (array_agg(failed {_FIRST}) FILTER (WHERE {_OUTCOME}))[1] AS outcome_failed
    FROM new GROUP BY trace_id, service
),
old_services AS (
    SELECT s.trace_id, s.service, s.start_at, s.outcome_at, s.outcome_failed
    FROM trace_services s JOIN per_service p USING (trace_id, service)
),
services AS (
    INSERT INTO trace_services AS s (trace_id, service, first_at, last_at, event_count, latest_at,
                                     latest_event_id, latest_status, latest_failed, start_at, outcome_at,
                                     outcome_event_id, outcome_failed)
    SELECT trace_id, service, first_at, last_at, n, latest_at, latest_event_id, latest_status, latest_failed,
           start_at, outcome_at, outcome_event_id, outcome_failed
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
                         THEN EXCLUDED.latest_failed ELSE s.latest_failed END,
        start_at = LEAST(s.start_at, EXCLUDED.start_at),
        outcome_at = CASE WHEN EXCLUDED.outcome_at IS NOT NULL AND (s.outcome_at IS NULL
                          OR (EXCLUDED.outcome_at, EXCLUDED.outcome_event_id) < (s.outcome_at, s.outcome_event_id))
                          THEN EXCLUDED.outcome_at ELSE s.outcome_at END,
        outcome_event_id = CASE WHEN EXCLUDED.outcome_at IS NOT NULL AND (s.outcome_at IS NULL
                          OR (EXCLUDED.outcome_at, EXCLUDED.outcome_event_id) < (s.outcome_at, s.outcome_event_id))
                          THEN EXCLUDED.outcome_event_id ELSE s.outcome_event_id END,
        outcome_failed = CASE WHEN EXCLUDED.outcome_at IS NOT NULL AND (s.outcome_at IS NULL
                          OR (EXCLUDED.outcome_at, EXCLUDED.outcome_event_id) < (s.outcome_at, s.outcome_event_id))
                          THEN EXCLUDED.outcome_failed ELSE s.outcome_failed END
    RETURNING trace_id, service, start_at, outcome_at, outcome_failed
),
per_trace AS (
    SELECT trace_id, min(ts) AS first_at, max(ts) AS last_at, count(*) AS n,
           count(*) FILTER (WHERE failed) AS n_failed,
           coalesce(bool_or(trace_status = 'FINISHED'), false) AS done,
           (array_agg(ts {_LATEST}) FILTER (WHERE trace_status = 'FINISHED'))[1] AS finish_at,
           (array_agg(event_id {_LATEST}) FILTER (WHERE trace_status = 'FINISHED'))[1] AS finish_event_id,
           (array_agg(failed {_LATEST}) FILTER (WHERE trace_status = 'FINISHED'))[1] AS finish_failed,
           min(account) AS account, min(org_id) AS org_id, min(inventory_id) AS inventory_id,
           min(system_id) AS system_id, min(source) AS source, min(domain) AS domain, min(domain_id) AS domain_id
    FROM new GROUP BY trace_id
),
old_traces AS (
    SELECT t.trace_id, t.first_at, t.finish_at, t.finish_failed
    FROM traces t JOIN per_trace p USING (trace_id)
),
traces_upserted AS (
    INSERT INTO traces AS t (trace_id, first_at, last_at, event_count, error_count, done,
                             finish_at, finish_event_id, finish_failed, status,
                             account, org_id, inventory_id, system_id, source, domain, domain_id)
    SELECT trace_id, first_at, last_at, n, n_failed, done, finish_at, finish_event_id, finish_failed, 'in_progress',
           account, org_id, inventory_id, system_id, source, domain, domain_id
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
                         THEN EXCLUDED.finish_failed ELSE t.finish_failed END,
        -- LEAST ignores NULLs: the smallest value ever seen, whatever the order.
        account = LEAST(t.account, EXCLUDED.account),
        org_id = LEAST(t.org_id, EXCLUDED.org_id),
        inventory_id = LEAST(t.inventory_id, EXCLUDED.inventory_id),
        system_id = LEAST(t.system_id, EXCLUDED.system_id),
        source = LEAST(t.source, EXCLUDED.source),
        domain = LEAST(t.domain, EXCLUDED.domain),
        domain_id = LEAST(t.domain_id, EXCLUDED.domain_id)
    RETURNING trace_id, first_at, finish_at, finish_failed
),
counts AS (
    INSERT INTO rollup_counts AS r (bucket, service, status, events)
    SELECT date_trunc('minute', ts), service, status, count(*) FROM new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (bucket, service, status) DO UPDATE SET events = r.events + EXCLUDED.events
),
counts_hour AS (
    INSERT INTO rollup_counts_hour AS r (bucket, service, status, events)
    SELECT date_trunc('hour', ts), service, status, count(*) FROM new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (bucket, service, status) DO UPDATE SET events = r.events + EXCLUDED.events
),
elapsed_changes AS (
    SELECT o.outcome_at AS at, 'service' AS kind, o.service, o.outcome_failed AS failed,
           o.outcome_at - o.start_at AS elapsed, -1 AS n
    FROM old_services o JOIN services s USING (trace_id, service)
    WHERE o.outcome_at IS NOT NULL
      AND (o.start_at, o.outcome_at, o.outcome_failed) IS DISTINCT FROM (s.start_at, s.outcome_at, s.outcome_failed)
    UNION ALL
    SELECT s.outcome_at, 'service', s.service, s.outcome_failed, s.outcome_at - s.start_at, 1
    FROM services s LEFT JOIN old_services o USING (trace_id, service)
    WHERE s.outcome_at IS NOT NULL
      AND (o.trace_id IS NULL
           OR (o.start_at, o.outcome_at, o.outcome_failed) IS DISTINCT FROM (s.start_at, s.outcome_at, s.outcome_failed))
    UNION ALL
    SELECT o.finish_at, 'trace', '', o.finish_failed, o.finish_at - o.first_at, -1
    FROM old_traces o JOIN traces_upserted t USING (trace_id)
    WHERE o.finish_at IS NOT NULL
      AND (o.first_at, o.finish_at, o.finish_failed) IS DISTINCT FROM (t.first_at, t.finish_at, t.finish_failed)
    UNION ALL
    SELECT t.finish_at, 'trace', '', t.finish_failed, t.finish_at - t.first_at, 1
    FROM traces_upserted t LEFT JOIN old_traces o USING (trace_id)
    WHERE t.finish_at IS NOT NULL
      AND (o.trace_id IS NULL
           OR (o.first_at, o.finish_at, o.finish_failed) IS DISTINCT FROM (t.first_at, t.finish_at, t.finish_failed))
),
elapsed AS (
    INSERT INTO rollup_elapsed AS r (bucket, kind, service, failed, bin, n)
    SELECT date_trunc('hour', at), kind, service, failed, tracker_elapsed_bin(elapsed), sum(n)
    FROM elapsed_changes GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (bucket, kind, service, failed, bin) DO UPDATE SET n = r.n + EXCLUDED.n
)
SELECT (SELECT count(*) FROM new) AS inserted,
       (SELECT coalesce(json_agg(json_build_array(service, status, n)), '[]')
        FROM (SELECT service, status, count(*) AS n FROM new GROUP BY 1, 2) c) AS counts,
       (SELECT coalesce(json_agg(json_build_array(kind, service, failed, extract(epoch FROM elapsed))), '[]')
        FROM elapsed_changes WHERE n = 1) AS elapsed
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
    # New events per (service, status), for the business metrics.
    counts: list = field(default_factory=list)
    # Elapsed times that became known: (kind 'service'|'trace', service, failed, seconds).
    elapsed: list = field(default_factory=list)


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
        await conn.execute(LOCK_STATE)
        row = await conn.fetchrow(UPSERT_BATCH)
        await conn.execute(REFRESH_STATUS, sorted({e.trace_id for e in events}))
    inserted = row["inserted"]
    return BatchResult(inserted, len(events) - inserted, row["counts"], row["elapsed"])
