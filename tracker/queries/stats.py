"""Rollup queries: they read rollup_counts_hour (and its per-minute view rollup_counts) and
rollup_elapsed, never events."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import asyncpg

from tracker.db import Connection
from tracker.events import ERROR_STATUSES

_ERRORS = sorted(ERROR_STATUSES)

# A window [since, now] read exactly: whole hours from the hourly rollup, the
# partial first hour from its per-minute counts (the view rollup_counts, migration 007,
# narrowed by its hour so that only that hour's rows are unnested).
_WINDOW = """
    SELECT bucket, service, status, events FROM rollup_counts_hour
    WHERE bucket >= $1
    UNION ALL
    SELECT bucket, service, status, events FROM rollup_counts
    WHERE hour = date_trunc('hour', $1::timestamptz) AND hour < $1 AND bucket >= $1
"""

SERVICES = f"""
SELECT service, sum(events)::bigint AS events,
       coalesce(sum(events) FILTER (WHERE status = 'success'), 0)::bigint AS success,
       coalesce(sum(events) FILTER (WHERE status = ANY($2::text[])), 0)::bigint AS error
FROM ({_WINDOW}) w
GROUP BY service ORDER BY service
"""

# Buckets of whole hours read the hourly rollup; finer ones the per-minute counts.
COUNTS_HOURLY = f"""
SELECT date_bin($2::interval, bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b, service, status,
       sum(events)::bigint AS events
FROM ({_WINDOW}) w
WHERE ($3::text IS NULL OR service = $3)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

COUNTS_MINUTE = """
SELECT date_bin($2::interval, bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b, service, status,
       sum(events)::bigint AS events
FROM rollup_counts
WHERE hour >= date_trunc('hour', $1::timestamptz) AND bucket >= $1 AND ($3::text IS NULL OR service = $3)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

ELAPSED = """
SELECT CASE WHEN kind = 'trace' THEN '*trace*' ELSE service END AS name, bin, sum(n)::bigint AS n
FROM rollup_elapsed
WHERE bucket >= date_trunc('hour', $1::timestamptz) AND ($2::text IS NULL OR kind = 'trace' OR service = $2)
GROUP BY 1, 2 HAVING sum(n) > 0 ORDER BY 1, 2
"""

# 1.15 is the bin ratio of tracker_elapsed_bin (migration 002).
_RATIO = 1.15


async def services(conn: Connection, since: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(SERVICES, since, _ERRORS)


async def elapsed_percentiles(conn: Connection, since: datetime, service: str | None) -> list[dict]:
    rows = await conn.fetch(ELAPSED, since, service)
    by_name: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append((row["bin"], row["n"]))
    return [{"service": name, **percentiles(bins)} for name, bins in by_name.items()]


def bin_seconds(b: int) -> float:
    """A bin's representative value: its geometric middle (bin 0 holds everything <= 1 ms)."""
    if b <= 0:
        return 0.001
    return _RATIO ** (b - 0.5) / 1000


def percentiles(bins: list[tuple[int, int]]) -> dict:
    total = sum(n for _, n in bins)
    out: dict[str, float] = {"count": total}
    for p in (50, 90, 95, 99):
        rank = math.ceil(total * p / 100)
        seen = 0
        for b, n in sorted(bins):
            seen += n
            if seen >= rank:
                out[f"p{p}"] = round(bin_seconds(b), 6)
                break
    return out


def _as_json_document(sql: str) -> str:
    """Wrap a counts query so that PostgreSQL renders the response document itself:
    a day of per-service, per-status buckets is ~1,500 rows, and building them as
    Python dicts cost more than the query (bench/query)."""
    return (
        f"SELECT json_build_object('data', coalesce(json_agg(json_build_object("
        f"'bucket', c.b, 'service', c.service, 'status', c.status, 'events', c.events) "
        f"ORDER BY c.b, c.service, c.status), '[]'::json))::text FROM ({sql}) c"
    )


COUNTS_HOURLY_JSON = _as_json_document(COUNTS_HOURLY)
COUNTS_MINUTE_JSON = _as_json_document(COUNTS_MINUTE)


async def counts_document(conn: Connection, since: datetime, bucket: timedelta, service: str | None) -> str:
    hourly = bucket % timedelta(hours=1) == timedelta(0)
    return await conn.fetchval(COUNTS_HOURLY_JSON if hourly else COUNTS_MINUTE_JSON, since, bucket, service)
