"""/v1/traces: one trace, its history, the search, and starting a trace over HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from connexion import request
from connexion.lifecycle import ConnexionResponse

from tracker.api import params, tenancy
from tracker.api.problems import not_found
from tracker.api.publish import send, validated
from tracker.api.responses import after, ok, page
from tracker.api.serialize import event_out, trace_summary_out
from tracker.queries import search
from tracker.queries import traces as q


def _unknown(trace_id: str):
    return not_found(
        f"No event has been seen for trace {trace_id!r}. Check the id; events are visible "
        "about a second after they are produced."
    )


async def get_trace(trace_id: str):
    async with request.state.reads.acquire() as conn:
        # Another tenant's trace is as unknown as one never seen.
        document = await q.fetch_trace_document(conn, trace_id, tenancy.current())
    if document is None:
        raise _unknown(trace_id)
    return ConnexionResponse(status_code=200, content_type="application/json", body=document)


async def get_trace_events(
    trace_id: str, order: str = "asc", limit: int = 100, cursor: str | None = None, include_body: bool = True
):
    position = after(cursor)
    async with request.state.reads.acquire() as conn:
        if await tenancy.hidden(conn, trace_id):
            raise _unknown(trace_id)
        rows = await q.fetch_events(
            conn, trace_id, descending=order == "desc", include_body=include_body, after=position, limit=limit + 1
        )
        if not rows and position is None and not await q.trace_exists(conn, trace_id):
            raise _unknown(trace_id)
    return page(rows, limit, lambda r: (r["ts"], r["event_id"]), lambda r: event_out(r, include_body))


async def search_traces(
    since=None, until=None, lookback=None, min_duration=None, max_duration=None, limit=50, cursor=None, **query
):
    # ``query``: the filters, as in search_events.
    start, end = params.window(since, until, lookback)
    filters = {name: query.get(name) for name in search.TRACE_FILTERS}
    position = after(cursor)
    async with request.state.reads.acquire() as conn:
        rows = await search.search_traces(
            conn,
            filters=filters,
            since=start,
            until=end,
            min_duration=params.duration(min_duration, "min_duration"),
            max_duration=params.duration(max_duration, "max_duration"),
            after=position,
            limit=limit + 1,
            tenants=tenancy.current(),
        )
    return page(rows, limit, lambda r: (r["created_at"], r["trace_id"]), trace_summary_out)


async def post_trace(body):
    trace_id = str(uuid.uuid4())
    event = {
        "trace_id": trace_id,
        "event_id": str(uuid.uuid4()),
        "status": "received",
        "trace_status": "STARTED",
        "timestamp": datetime.now(UTC).isoformat(),
        **body,
    }
    value, parsed = await validated(event, "trace")
    await send(value, trace_id)
    # 202, not 201: the trace exists once the consumer has stored this event, a moment later.
    return ok(
        {"trace_id": trace_id, "event_id": parsed.event_id, "topic": request.state.settings.topic},
        status=202,
        headers={"Location": f"/v1/traces/{trace_id}"},
    )
