"""Queries behind the ancestors' routes. Offset paging, as their clients expect; the
count is capped so that it never scans more than COUNT_CAP rows."""

from __future__ import annotations

from tracker.db import Connection
from tracker.queries.search import Where
from tracker.tenants import Tenants

COUNT_CAP = 10_000

PAYLOAD_SORT = {
    "account": "account",
    "org_id": "org_id",
    "inventory_id": "inventory_id",
    "system_id": "system_id",
    "created_at": "created_at",
}
STATUS_SORT = {
    "service": "service",
    "source": "source",
    "status": "status",
    "status_msg": "message",
    "date": "ts",
    "created_at": "received_at",
}
_DIRECTION = {"asc": "ASC", "desc": "DESC"}
_OPS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}

STATUS_COLUMNS = """trace_id, service, source, status, message, ts, received_at, account, org_id,
    inventory_id, system_id"""


def add_ranges(where: Where, column: str, ranges: dict) -> None:
    """``ranges``: {"lt": value, ...} for the *_lt/_lte/_gt/_gte parameters of one column."""
    for op, value in ranges.items():
        if value is not None:
            where.add(f"{column} {_OPS[op]} {{}}", value)


async def _page(conn, table: str, columns: str, where: Where, order: str, page: int, page_size: int):
    args = list(where.args)
    count_sql = f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where.sql()} LIMIT {COUNT_CAP}) capped"
    count = await conn.fetchval(count_sql, *args)
    args += [page_size, page * page_size]
    rows = await conn.fetch(
        f"SELECT {columns} FROM {table} WHERE {where.sql()} ORDER BY {order} "
        f"LIMIT ${len(args) - 1} OFFSET ${len(args)}",
        *args,
    )
    return count, rows


async def payloads(
    conn: Connection,
    *,
    filters: dict,
    created: dict,
    sort_by: str,
    sort_dir: str,
    page: int,
    page_size: int,
    tenants: Tenants | None = None,
):
    where = Where()
    where.tenants(tenants)
    for column in ("account", "org_id", "inventory_id", "system_id"):
        if filters.get(column) is not None:
            where.add(f"{column} = {{}}", filters[column])
    add_ranges(where, "created_at", created)
    order = f"{PAYLOAD_SORT[sort_by]} {_DIRECTION[sort_dir]}, trace_id {_DIRECTION[sort_dir]}"
    return await _page(
        conn,
        "traces t",
        "trace_id, account, org_id, inventory_id, system_id, created_at",
        where,
        order,
        page,
        page_size,
    )


async def statuses(
    conn: Connection,
    *,
    filters: dict,
    dates: dict,
    created: dict,
    sort_by: str,
    sort_dir: str,
    page: int,
    page_size: int,
    tenants: Tenants | None = None,
):
    where = Where()
    where.tenants(tenants, "trace_id")
    for param, column in (
        ("service", "service"),
        ("source", "source"),
        ("status", "status"),
        ("status_msg", "message"),
    ):
        if filters.get(param) is not None:
            where.add(f"{column} = {{}}", filters[param])
    add_ranges(where, "ts", dates)
    add_ranges(where, "received_at", created)
    order = f"{STATUS_SORT[sort_by]} {_DIRECTION[sort_dir]}, event_id {_DIRECTION[sort_dir]}"
    return await _page(conn, "events", STATUS_COLUMNS, where, order, page, page_size)


async def payload_statuses(conn: Connection, request_id: str, sort_by: str, sort_dir: str):
    order = f"{STATUS_SORT[sort_by]} {_DIRECTION[sort_dir]}, ts, event_id"
    return await conn.fetch(
        f"SELECT {STATUS_COLUMNS} FROM events WHERE trace_id = $1 "
        "AND ts >= (SELECT first_at FROM traces WHERE trace_id = $1) "
        "AND ts <= (SELECT last_at FROM traces WHERE trace_id = $1) "
        f"ORDER BY {order} LIMIT 10000",
        request_id,
    )


STATUS_API_EVENTS = """
SELECT event_id, trace_id, domain, domain_id, start_time, end_time, trace_status, failed, username, service,
       operation, body, meta, path, duration_ms, exception, errors, message
FROM events WHERE trace_id = $1 AND ts >= (SELECT first_at FROM traces WHERE trace_id = $1)
  AND ts <= (SELECT last_at FROM traces WHERE trace_id = $1)
ORDER BY ts, event_id LIMIT 10000
"""


async def status_api_events(conn: Connection, trace_id: str):
    return await conn.fetch(STATUS_API_EVENTS, trace_id)
