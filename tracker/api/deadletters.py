"""Handler for /v1/dead-letters: parse -> query -> shape."""

from __future__ import annotations

from connexion import request

from tracker.api import cursor as cursors
from tracker.api import params
from tracker.api.problems import bad_request, ok
from tracker.api.shapes import iso
from tracker.queries import deadletters as q

EXCERPT_CHARS = 1000


def _after(cursor: str | None):
    try:
        return cursors.decode_numbered(cursor) if cursor else None
    except cursors.BadCursor as exc:
        raise bad_request(str(exc)) from None


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def dead_letter_out(row) -> dict:
    head = _text(row["head"])
    excerpt = None if head is None else head[:EXCERPT_CHARS]
    return {
        "topic": row["topic"], "partition": row["partition"], "offset": row["offset"],
        "message_at": iso(row["message_at"]), "received_at": iso(row["received_at"]),
        "reason": row["reason"], "detail": row["detail"], "key": _text(row["key"]),
        "excerpt": excerpt, "size": row["size"],
        "excerpt_truncated": excerpt is not None and len(excerpt.encode()) < (row["size"] or 0),
        "published": row["published"],
    }


async def list_dead_letters(reason=None, since=None, until=None, lookback=None, limit=50, cursor=None):
    start, end = params.window(since, until, lookback)
    after = _after(cursor)
    async with request.state.pool.acquire() as conn:
        rows = await q.list_dead_letters(conn, reason=reason, since=start, until=end, after=after, limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = cursors.encode(page[-1]["received_at"], str(page[-1]["id"])) if more else None
    return ok({"data": [dead_letter_out(r) for r in page], "next_cursor": next_cursor})
