"""The dead letters the consumer recorded (migration 006), newest first."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from tracker.db import Connection

# The excerpt is cut in PostgreSQL: a dead letter can be a megabyte, a page shows a thousand characters.
EXCERPT_BYTES = 4000


# Newest first by the (received_at, id) index, whichever filters are given ($n NULL: not given).
LIST = f"""
    SELECT id, topic, "partition", "offset", message_at, received_at, reason, detail, key,
           substring(value FROM 1 FOR {EXCERPT_BYTES}) AS head, size, published_at IS NOT NULL AS published
    FROM dead_letters
    WHERE ($1::text IS NULL OR reason = $1)
      AND ($2::timestamptz IS NULL OR received_at >= $2)
      AND ($3::timestamptz IS NULL OR received_at <= $3)
      AND ($4::timestamptz IS NULL OR (received_at, id) < ($4, $5::bigint))
    ORDER BY received_at DESC, id DESC
    LIMIT $6
"""


async def list_dead_letters(
    conn: Connection,
    *,
    reason: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(LIST, reason, since, until, after[0] if after else None, after[1] if after else None, limit)
