"""/v1/events: statuses across traces, and sending one event over HTTP."""

from __future__ import annotations

from connexion import request

from tracker.api import params
from tracker.api.publish import send, validated
from tracker.api.responses import after, ok, page
from tracker.api.serialize import event_out
from tracker.queries import search


async def search_events(service=None, status=None, account=None, org_id=None, inventory_id=None, system_id=None,
                        source=None, domain=None, domain_id=None, since=None, until=None, lookback=None, limit=50,
                        cursor=None, include_body=False):
    start, end = params.window(since, until, lookback)
    filters = {"service": service, "status": status, "account": account, "org_id": org_id,
               "inventory_id": inventory_id, "system_id": system_id, "source": source, "domain": domain,
               "domain_id": domain_id}
    position = after(cursor)
    async with request.state.pool.acquire() as conn:
        rows = await search.search_events(conn, filters=filters, since=start, until=end, after=position,
                                          limit=limit + 1, include_body=include_body)
    return page(rows, limit, lambda r: (r["ts"], r["event_id"]), lambda r: event_out(r, include_body))


async def post_event(body):
    value, parsed = validated(body, "event")
    await send(value, parsed.trace_id)
    return ok({"trace_id": parsed.trace_id, "event_id": parsed.event_id, "topic": request.state.settings.topic},
              status=202)
