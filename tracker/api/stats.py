"""Handlers for /v1/services and /v1/stats/*: read the rollups the consumer maintains."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from connexion import request
from connexion.lifecycle import ConnexionResponse

from tracker.api import params
from tracker.api.problems import bad_request
from tracker.api.responses import ok
from tracker.queries import stats as q


def _since(lookback: str) -> datetime:
    return params.before(datetime.now(UTC), params.duration(lookback, "lookback"))


async def services(lookback: str = "24h"):
    async with request.state.reads.acquire() as conn:
        rows = await q.services(conn, _since(lookback))
    return ok({"data": [dict(r) for r in rows]})


async def counts(lookback: str = "24h", bucket: str = "1h", service: str | None = None):
    width = params.duration(bucket, "bucket")
    if width < timedelta(minutes=1):
        raise bad_request(f"bucket: {bucket!r} is finer than the rollups, which count per minute; use 1m or more")
    since = _since(lookback)
    buckets = (datetime.now(UTC) - since) / width
    if buckets > 10_000:
        raise bad_request(f"lookback / bucket gives {int(buckets)} buckets; at most 10000 are allowed")
    async with request.state.reads.acquire() as conn:
        document = await q.counts_document(conn, since, width, service)
    return ConnexionResponse(status_code=200, content_type="application/json", body=document)


async def elapsed(lookback: str = "24h", service: str | None = None):
    async with request.state.reads.acquire() as conn:
        data = await q.elapsed_percentiles(conn, _since(lookback), service)
    return ok({"data": data})


async def success_rate(lookback: str = "24h"):
    async with request.state.reads.acquire() as conn:
        rows = await q.services(conn, _since(lookback))
    data = [
        {
            "service": r["service"],
            "success": r["success"],
            "error": r["error"],
            "success_rate": round(r["success"] / (r["success"] + r["error"]), 6),
        }
        for r in rows
        if r["success"] + r["error"] > 0
    ]
    return ok({"data": data})
