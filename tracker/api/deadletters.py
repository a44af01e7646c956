"""/v1/dead-letters: the messages the consumer rejected, why, and where they came from."""

from __future__ import annotations

from connexion import request

from tracker.api import params
from tracker.api.responses import after, page
from tracker.api.serialize import iso
from tracker.queries import deadletters as q

EXCERPT_CHARS = 1000


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def dead_letter_out(row) -> dict:
    head = _text(row["head"])
    excerpt = None if head is None else head[:EXCERPT_CHARS]
    return {
        "topic": row["topic"],
        "partition": row["partition"],
        "offset": row["offset"],
        "message_at": iso(row["message_at"]),
        "received_at": iso(row["received_at"]),
        "reason": row["reason"],
        "detail": row["detail"],
        "key": _text(row["key"]),
        "excerpt": excerpt,
        "size": row["size"],
        "excerpt_truncated": excerpt is not None and len(excerpt.encode()) < (row["size"] or 0),
        "published": row["published"],
    }


async def list_dead_letters(reason=None, since=None, until=None, lookback=None, limit=50, cursor=None):
    start, end = params.window(since, until, lookback)
    position = after(cursor, numbered=True)
    async with request.state.reads.acquire() as conn:
        rows = await q.list_dead_letters(conn, reason=reason, since=start, until=end, after=position, limit=limit + 1)
    return page(rows, limit, lambda r: (r["received_at"], r["id"]), dead_letter_out)
