"""Handlers for /v1/traces (search), /v1/events and /v1/lookup: parse -> query -> shape."""

from __future__ import annotations

from connexion import request

from tracker.api import cursor as cursors
from tracker.api import params
from tracker.api.problems import bad_request, ok
from tracker.api.shapes import event_out, iso, trace_summary_out
from tracker.queries import search as q


def _after(cursor: str | None):
    try:
        return cursors.decode(cursor) if cursor else None
    except cursors.BadCursor as exc:
        raise bad_request(str(exc)) from None


async def search_traces(service=None, status=None, done=None, account=None, org_id=None, inventory_id=None,
                        system_id=None, source=None, domain=None, domain_id=None, since=None, until=None,
                        lookback=None, min_duration=None, max_duration=None, limit=50, cursor=None):
    start, end = params.window(since, until, lookback)
    filters = {"service": service, "status": status, "done": done, "account": account, "org_id": org_id,
               "inventory_id": inventory_id, "system_id": system_id, "source": source, "domain": domain,
               "domain_id": domain_id}
    after = _after(cursor)
    async with request.state.pool.acquire() as conn:
        rows = await q.search_traces(conn, filters=filters, since=start, until=end,
                                     min_duration=params.duration(min_duration, "min_duration"),
                                     max_duration=params.duration(max_duration, "max_duration"),
                                     after=after, limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = cursors.encode(page[-1]["created_at"], page[-1]["trace_id"]) if more else None
    return ok({"data": [trace_summary_out(r) for r in page], "next_cursor": next_cursor})


async def search_events(service=None, status=None, account=None, org_id=None, inventory_id=None, system_id=None,
                        source=None, domain=None, domain_id=None, since=None, until=None, lookback=None, limit=50,
                        cursor=None, include_body=False):
    start, end = params.window(since, until, lookback)
    filters = {"service": service, "status": status, "account": account, "org_id": org_id,
               "inventory_id": inventory_id, "system_id": system_id, "source": source, "domain": domain,
               "domain_id": domain_id}
    after = _after(cursor)
    async with request.state.pool.acquire() as conn:
        rows = await q.search_events(conn, filters=filters, since=start, until=end, after=after, limit=limit + 1,
                                     include_body=include_body)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = cursors.encode(page[-1]["ts"], page[-1]["event_id"]) if more else None
    return ok({"data": [event_out(r, include_body) for r in page], "next_cursor": next_cursor})


async def lookup_path(path: str):
    async with request.state.pool.acquire() as conn:
        rows = await q.lookup_path(conn, path)
    return ok({"data": [{"trace_id": r["trace_id"], "event_id": r["event_id"], "service": r["service"],
                         "timestamp": iso(r["ts"])} for r in rows]})
