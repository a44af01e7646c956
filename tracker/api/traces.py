"""Handlers for /v1/traces/...: parse -> query -> shape."""

from __future__ import annotations

from connexion import request
from connexion.lifecycle import ConnexionResponse

from tracker.api import cursor as cursors
from tracker.api.problems import bad_request, not_found, ok
from tracker.api.shapes import event_out
from tracker.queries import traces as q


def _unknown(trace_id: str):
    return not_found(f"No event has been seen for trace {trace_id!r}. Check the id; events are visible "
                     "about a second after they are produced.")


async def get_trace(trace_id: str):
    async with request.state.pool.acquire() as conn:
        document = await q.fetch_trace_document(conn, trace_id)
    if document is None:
        raise _unknown(trace_id)
    return ConnexionResponse(status_code=200, content_type="application/json", body=document)


async def get_trace_events(trace_id: str, order: str = "asc", limit: int = 100, cursor: str | None = None,
                           include_body: bool = True):
    try:
        after = cursors.decode(cursor) if cursor else None
    except cursors.BadCursor as exc:
        raise bad_request(str(exc)) from None
    async with request.state.pool.acquire() as conn:
        rows = await q.fetch_events(conn, trace_id, descending=order == "desc", include_body=include_body,
                                    after=after, limit=limit + 1)
        if not rows and after is None and not await q.trace_exists(conn, trace_id):
            raise _unknown(trace_id)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = cursors.encode(page[-1]["ts"], page[-1]["event_id"]) if more else None
    return ok({"data": [event_out(r, include_body) for r in page], "next_cursor": next_cursor})
