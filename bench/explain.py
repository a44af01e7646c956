"""EXPLAIN (ANALYZE) of every query the API runs, on a loaded database.

Printed by bench/query after the load test (and runnable alone:
python -m bench.explain DATABASE_URL). Each plan is shown in full so that a
reader can see which index serves which filter, and that none scans a table.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

import asyncpg

from consumer import deadletter
from tracker.events import ERROR_STATUSES
from tracker.queries import compat, deadletters, search, stats, traces


def queries(trace_id: str, account: str) -> list[tuple[str, str, list]]:
    now = datetime.now(UTC)
    day = now - timedelta(hours=24)
    out: list[tuple[str, str, list]] = [
        ("GET /v1/traces/{id}", traces.TRACE_DOCUMENT, [trace_id]),
        ("GET /v1/traces/{id}/events", traces.EVENTS_SQL[(False, True)], [trace_id, None, None, 101]),
        (
            "GET /v1/events?service&lookback=1h",
            *search.search_events_sql(filters={"service": "service-07"}, since=now - timedelta(hours=1)),
        ),
        ("GET /v1/events?account", *search.search_events_sql(filters={"account": account})),
        ("GET /v1/lookup?path", search.LOOKUP_PATH, ["s3://bucket/key"]),
        ("GET /v1/services?lookback=24h", stats.SERVICES, [day, sorted(ERROR_STATUSES)]),
        ("GET /v1/stats/counts?lookback=24h&bucket=1h", stats.COUNTS_HOURLY, [day, timedelta(hours=1), None]),
        ("GET /v1/stats/elapsed?lookback=24h", stats.ELAPSED, [day, None]),
        (
            "GET /v1/payloads/{request_id}",
            f"SELECT {compat.STATUS_COLUMNS} FROM events WHERE trace_id = $1 ORDER BY ts ASC, ts, event_id LIMIT 10000",
            [trace_id],
        ),
        ("GET /status/{trace_id}", compat.STATUS_API_EVENTS, [trace_id]),
        ("GET /v1/dead-letters", deadletters.LIST, [None, None, None, None, None, 51]),
        ("consumer: dead letters to publish", deadletter.PENDING, [1000]),
    ]
    for name, filters in (
        ("service + status=failed, 24h", {"service": "service-07", "status": "failed"}),
        ("account", {"account": account}),
        ("newest", {}),
    ):
        since = day if "24h" in name else None
        sql, args = search.search_traces_sql(filters=filters, since=since)
        out.append((f"GET /v1/traces?{name}", sql, args))
    return out


async def explain(url: str, trace_id: str = "trace-123", account: str = "0000123") -> None:
    conn = await asyncpg.connect(url)
    try:
        for name, sql, args in queries(trace_id, account):
            rows = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) " + sql, *args)
            print(f"\n-- {name}")
            for row in rows:
                print("   " + row[0])
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(explain(sys.argv[1]))
