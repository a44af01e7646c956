"""/v1/events: statuses across traces, and sending one event over HTTP."""

from __future__ import annotations

from connexion import request

from tracker.api import params, tenancy
from tracker.api.publish import send, validated
from tracker.api.responses import after, ok, page
from tracker.api.serialize import event_out
from tracker.queries import search


async def search_events(since=None, until=None, lookback=None, limit=50, cursor=None, include_body=False, **query):
    # ``query``: the filters the spec declares for the route, by name (only the known ones are
    # read: Connexion also passes its request context this way).
    start, end = params.window(since, until, lookback)
    filters = {name: query.get(name) for name in search.EVENT_FILTERS}
    position = after(cursor)
    async with request.state.reads.acquire() as conn:
        rows = await search.search_events(
            conn,
            filters=filters,
            since=start,
            until=end,
            after=position,
            limit=limit + 1,
            include_body=include_body,
            tenants=tenancy.current(),
        )
    return page(rows, limit, lambda r: (r["ts"], r["event_id"]), lambda r: event_out(r, include_body))


async def post_event(body):
    value, parsed = await validated(body, "event")
    await send(value, parsed.trace_id)
    return ok(
        {"trace_id": parsed.trace_id, "event_id": parsed.event_id, "topic": request.state.settings.topic}, status=202
    )
