"""Write one batch of events and the trace state and rollups they imply, in one transaction.

Idempotent by event key (event_id, ts): only rows actually inserted feed the
state, so a redelivered batch changes nothing.

Order independent: the batch is folded in Python into one row per trace, per
(trace, service) and per rollup key, and every merge in SQL (least, greatest,
sum, latest by (ts, event_id)) is commutative, so the state does not depend on
the order in which events arrive. Only rows really inserted are folded.

Costs, measured with bench/ingest (README): events go in by COPY straight into
the partitioned table; only when a key is already there (rare: a producer that
sent an event twice) does the batch take the exact path through a staging
table and ON CONFLICT. The fold sends PostgreSQL ~0.6 rows per event instead
of making it sort and aggregate what Python already holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from tracker.events import Event

COLUMNS = (
    "event_id", "trace_id", "service", "status", "failed", "ts", "trace_status", "start_time", "end_time",
    "duration_ms", "source", "account", "org_id", "inventory_id", "system_id", "domain", "domain_id",
    "username", "operation", "path", "message", "errors", "exception", "meta", "body", "format",
)
_COLS = ", ".join(COLUMNS)
TRACE_ATTRIBUTES = ("account", "org_id", "inventory_id", "system_id", "source", "domain", "domain_id")

# Per connection; ON COMMIT DELETE ROWS empties it at the end of every batch.
CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS staging_events (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)

# The exact path, when the fast COPY met a key already stored.
INSERT_NEW = f"""
INSERT INTO events ({_COLS}) SELECT {_COLS} FROM staging_events
ON CONFLICT (event_id, ts) DO NOTHING RETURNING event_id, ts
"""

# Lock the state rows this batch touches, in key order (the ids come sorted; no
# deadlocks between writers), each by a primary-key probe whatever the statistics. The state statement after it then reads their current values as
# "before" and computes exact histogram corrections from them.
LOCK_STATE = """
WITH k AS (SELECT trace_id FROM unnest($1::text[]) WITH ORDINALITY AS k(trace_id, n) ORDER BY n),
     t AS (SELECT x.trace_id FROM k CROSS JOIN LATERAL (
               SELECT trace_id FROM traces WHERE trace_id = k.trace_id FOR UPDATE) x),
     s AS (SELECT x.trace_id FROM k CROSS JOIN LATERAL (
               SELECT trace_id FROM trace_services WHERE trace_id = k.trace_id ORDER BY service FOR UPDATE) x)
SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM s)
"""

# Ties on time are broken by event id in byte order, as Python compares them in the fold.
_C = 'COLLATE "C"'


def _newer(new: str, old: str, at: str, event_id: str, *, first: bool = False) -> str:
    """SQL: is (new.at, new.id) later (earliest when ``first``) than (old.at, old.id)? Old may be NULL."""
    op = "<" if first else ">"
    return (f"{new}.{at} IS NOT NULL AND ({old}.{at} IS NULL OR ({new}.{at}, {new}.{event_id} {_C}) "
            f"{op} ({old}.{at}, {old}.{event_id} {_C}))")


def _pick(cond: str, new: str, old: str, columns: Sequence[str]) -> str:
    return ",\n        ".join(f"{c} = CASE WHEN {cond} THEN {new}.{c} ELSE {old}.{c} END" for c in columns)


_SERVICE_LATEST = _newer("EXCLUDED", "s", "latest_at", "latest_event_id")
_SERVICE_OUTCOME = _newer("EXCLUDED", "s", "outcome_at", "outcome_event_id", first=True)
_TRACE_FINISH = _newer("EXCLUDED", "t", "finish_at", "finish_event_id")
_FINISH_FAILED = f"CASE WHEN {_TRACE_FINISH} THEN EXCLUDED.finish_failed ELSE t.finish_failed END"

# One statement for the state: the inputs are the batch folded by Python (one
# row per key); "before" values are read in the same snapshot, after LOCK_STATE.
UPSERT_STATE = f"""
WITH ps AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[],
                         $6::timestamptz[], $7::text[], $8::text[], $9::boolean[], $10::timestamptz[],
                         $11::timestamptz[], $12::text[], $13::boolean[])
        AS p(trace_id, service, first_at, last_at, n, latest_at, latest_event_id, latest_status, latest_failed,
             start_at, outcome_at, outcome_event_id, outcome_failed)
),
-- LATERAL ... LIMIT 1: one primary-key probe per input row. As a join, the planner hashes
-- the whole table (a sequential scan per batch, growing with the data).
old_services AS (
    SELECT o.* FROM ps CROSS JOIN LATERAL (
        SELECT s.trace_id, s.service, s.start_at, s.outcome_at, s.outcome_failed, s.latest_failed
        FROM trace_services s WHERE s.trace_id = ps.trace_id AND s.service = ps.service LIMIT 1) o
),
services AS (
    INSERT INTO trace_services AS s (trace_id, service, first_at, last_at, event_count, latest_at,
                                     latest_event_id, latest_status, latest_failed, start_at, outcome_at,
                                     outcome_event_id, outcome_failed)
    SELECT * FROM ps
    ON CONFLICT (trace_id, service) DO UPDATE SET
        first_at = LEAST(s.first_at, EXCLUDED.first_at),
        last_at = GREATEST(s.last_at, EXCLUDED.last_at),
        event_count = s.event_count + EXCLUDED.event_count,
        {_pick(_SERVICE_LATEST, "EXCLUDED", "s", ("latest_at", "latest_event_id", "latest_status", "latest_failed"))},
        start_at = LEAST(s.start_at, EXCLUDED.start_at),
        {_pick(_SERVICE_OUTCOME, "EXCLUDED", "s", ("outcome_at", "outcome_event_id", "outcome_failed"))}
    RETURNING trace_id, service, start_at, outcome_at, outcome_failed, latest_failed
),
-- Services whose latest event turned failed (+1) or stopped being failed (-1), per trace.
failed_delta AS (
    SELECT s.trace_id, sum(s.latest_failed::int - coalesce(o.latest_failed, false)::int)::int AS d
    FROM services s LEFT JOIN old_services o USING (trace_id, service) GROUP BY s.trace_id
),
pt AS (
    SELECT * FROM unnest($14::text[], $15::timestamptz[], $16::timestamptz[], $17::bigint[], $18::bigint[],
                         $19::boolean[], $20::timestamptz[], $21::text[], $22::boolean[], $23::text[], $24::text[],
                         $25::text[], $26::text[], $27::text[], $28::text[], $29::text[])
        AS t(trace_id, first_at, last_at, n, n_failed, done, finish_at, finish_event_id, finish_failed,
             account, org_id, inventory_id, system_id, source, domain, domain_id)
),
old_traces AS (
    SELECT o.* FROM pt CROSS JOIN LATERAL (
        SELECT t.trace_id, t.first_at, t.finish_at, t.finish_failed FROM traces t
        WHERE t.trace_id = pt.trace_id LIMIT 1) o
),
traces_upserted AS (
    INSERT INTO traces AS t (trace_id, first_at, last_at, active_hour, event_count, error_count, done,
                             finish_at, finish_event_id, finish_failed, failed_services, status,
                             {", ".join(TRACE_ATTRIBUTES)})
    SELECT pt.trace_id, pt.first_at, pt.last_at, date_trunc('hour', pt.last_at, 'UTC'), pt.n, pt.n_failed, pt.done,
           pt.finish_at, pt.finish_event_id, pt.finish_failed, coalesce(fd.d, 0),
           CASE WHEN pt.done THEN CASE WHEN pt.finish_failed THEN 'failed' ELSE 'success' END
                WHEN coalesce(fd.d, 0) > 0 THEN 'failed' ELSE 'in_progress' END,
           {", ".join(f"pt.{a}" for a in TRACE_ATTRIBUTES)}
    FROM pt LEFT JOIN failed_delta fd USING (trace_id)
    ON CONFLICT (trace_id) DO UPDATE SET
        first_at = LEAST(t.first_at, EXCLUDED.first_at),
        last_at = GREATEST(t.last_at, EXCLUDED.last_at),
        active_hour = GREATEST(t.active_hour, EXCLUDED.active_hour),
        event_count = t.event_count + EXCLUDED.event_count,
        error_count = t.error_count + EXCLUDED.error_count,
        done = t.done OR EXCLUDED.done,
        {_pick(_TRACE_FINISH, "EXCLUDED", "t", ("finish_at", "finish_event_id", "finish_failed"))},
        failed_services = t.failed_services + EXCLUDED.failed_services,
        -- The overall status from the merged row: the finishing event decides; before it, any
        -- service whose latest event failed.
        status = CASE WHEN t.done OR EXCLUDED.done
                      THEN CASE WHEN {_FINISH_FAILED} THEN 'failed' ELSE 'success' END
                      WHEN t.failed_services + EXCLUDED.failed_services > 0 THEN 'failed'
                      ELSE 'in_progress' END,
        updated_at = now(),
        -- LEAST ignores NULLs: the smallest value ever seen, whatever the order.
        {", ".join(f"{a} = LEAST(t.{a} {_C}, EXCLUDED.{a})" for a in TRACE_ATTRIBUTES)}
    RETURNING trace_id, first_at, finish_at, finish_failed
),
counts AS (
    INSERT INTO rollup_counts AS r (bucket, service, status, events)
    SELECT * FROM unnest($30::timestamptz[], $31::text[], $32::text[], $33::bigint[])
    ON CONFLICT (bucket, service, status) DO UPDATE SET events = r.events + EXCLUDED.events
),
counts_hour AS (
    INSERT INTO rollup_counts_hour AS r (bucket, service, status, events)
    SELECT * FROM unnest($34::timestamptz[], $35::text[], $36::text[], $37::bigint[])
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
    SELECT date_trunc('hour', at, 'UTC'), kind, service, failed, tracker_elapsed_bin(elapsed), sum(n)
    FROM elapsed_changes GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (bucket, kind, service, failed, bin) DO UPDATE SET n = r.n + EXCLUDED.n
)
SELECT coalesce(json_agg(json_build_array(kind, service, failed, extract(epoch FROM elapsed))), '[]') AS elapsed
FROM elapsed_changes WHERE n = 1
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


def _minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def _hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def fold(events: Sequence[Event]) -> tuple[list, list, list, list, dict]:
    """The batch as UPSERT_STATE's arguments: one row per (trace, service), per trace and per
    rollup key (each list sorted by its key, the lock order), plus the counts per (service, status)."""
    services: dict[tuple[str, str], list] = {}
    traces: dict[str, list] = {}
    minutes: dict[tuple, int] = {}
    for e in events:
        ts, eid = e.timestamp, e.event_id
        start = ts if e.start_time is None or e.start_time >= ts else e.start_time
        outcome = e.status == "success" or e.failed
        key = (e.trace_id, e.service)
        s = services.get(key)
        # A service's (and a trace's) first time is its earliest event or Status API step
        # start, so that a 1 s step shows 1 s, as the elapsed-time rollups count it.
        if s is None:
            services[key] = [start, ts, 1, ts, eid, e.status, e.failed, start,
                             ts if outcome else None, eid if outcome else None, e.failed if outcome else None]
        else:
            if start < s[0]:
                s[0] = start
            if ts > s[1]:
                s[1] = ts
            s[2] += 1
            if (ts, eid) > (s[3], s[4]):
                s[3], s[4], s[5], s[6] = ts, eid, e.status, e.failed
            if start < s[7]:
                s[7] = start
            if outcome and (s[8] is None or (ts, eid) < (s[8], s[9])):
                s[8], s[9], s[10] = ts, eid, e.failed
        finished = e.trace_status == "FINISHED"
        t = traces.get(e.trace_id)
        if t is None:
            traces[e.trace_id] = [start, ts, 1, int(e.failed), finished, ts if finished else None,
                                  eid if finished else None, e.failed if finished else None,
                                  *(getattr(e, a) for a in TRACE_ATTRIBUTES)]
        else:
            if start < t[0]:
                t[0] = start
            if ts > t[1]:
                t[1] = ts
            t[2] += 1
            t[3] += e.failed
            if finished:
                t[4] = True
                if t[5] is None or (ts, eid) > (t[5], t[6]):
                    t[5], t[6], t[7] = ts, eid, e.failed
            for i, a in enumerate(TRACE_ATTRIBUTES, 8):
                v = getattr(e, a)
                if v is not None and (t[i] is None or v < t[i]):
                    t[i] = v
        mk = (_minute(ts), e.service, e.status)
        minutes[mk] = minutes.get(mk, 0) + 1
    hours: dict[tuple, int] = {}
    per_status: dict[tuple[str, str], int] = {}
    for (minute, service, status), n in minutes.items():
        hk = (_hour(minute), service, status)
        hours[hk] = hours.get(hk, 0) + n
        per_status[(service, status)] = per_status.get((service, status), 0) + n
    service_rows = [(k[0], k[1], *v) for k, v in sorted(services.items())]
    trace_rows = [(k, *v) for k, v in sorted(traces.items())]
    return (service_rows, trace_rows, [(*k, n) for k, n in sorted(minutes.items())],
            [(*k, n) for k, n in sorted(hours.items())], per_status)


def _columns(rows: list[tuple], width: int) -> list[list]:
    return [list(c) for c in zip(*rows)] if rows else [[] for _ in range(width)]


async def _insert_events(conn: asyncpg.Connection, events: list[Event]) -> list[Event]:
    """Store the events; returns those that were new."""
    records = [event_record(e) for e in events]
    try:
        async with conn.transaction():  # a savepoint: a key conflict undoes only this COPY
            await conn.copy_records_to_table("events", records=records, columns=COLUMNS)
        return events
    except asyncpg.UniqueViolationError:
        pass
    await conn.copy_records_to_table("staging_events", records=records, columns=COLUMNS)
    new = {(r["event_id"], r["ts"]) for r in await conn.fetch(INSERT_NEW)}
    return [e for e in events if (e.event_id, e.timestamp) in new]


async def write_batch(conn: asyncpg.Connection, events: Sequence[Event]) -> BatchResult:
    """Store ``events`` with the trace state and rollups they imply; one transaction."""
    # A message sent twice within one batch: keep one (the key would refuse the other).
    unique = list({(e.event_id, e.timestamp): e for e in events}.values())
    # Key order: two writers that share keys lock them in the same order.
    unique.sort(key=lambda e: (e.event_id, e.timestamp))
    async with conn.transaction():
        inserted = await _insert_events(conn, unique) if unique else []
        elapsed: list = []
        per_status: dict = {}
        if inserted:
            service_rows, trace_rows, minute_rows, hour_rows, per_status = fold(inserted)
            s_cols, t_cols = _columns(service_rows, 13), _columns(trace_rows, 16)
            await conn.execute(LOCK_STATE, t_cols[0])
            elapsed = await conn.fetchval(UPSERT_STATE, *s_cols, *t_cols, *_columns(minute_rows, 4),
                                          *_columns(hour_rows, 4))
    counts = [(service, status, n) for (service, status), n in per_status.items()]
    return BatchResult(len(inserted), len(events) - len(inserted), counts, elapsed)
