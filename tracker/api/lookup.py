"""/v1/lookup: which traces touched a path (the Status API's lookup by S3 path)."""

from __future__ import annotations

from connexion import request

from tracker.api import tenancy
from tracker.api.responses import ok
from tracker.api.serialize import iso
from tracker.queries import search


async def lookup_path(path: str):
    async with request.state.reads.acquire() as conn:
        rows = await search.lookup_path(conn, path, tenancy.current())
    return ok(
        {
            "data": [
                {
                    "trace_id": r["trace_id"],
                    "event_id": r["event_id"],
                    "service": r["service"],
                    "timestamp": iso(r["ts"]),
                }
                for r in rows
            ]
        }
    )
