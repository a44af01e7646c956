"""Handlers for /healthz, /readyz and /metrics."""

from __future__ import annotations

from connexion import request
from connexion.lifecycle import ConnexionResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tracker.api.problems import ProblemException
from tracker.api.responses import ok


async def healthz():
    return ok({"status": "ok"})


async def readyz():
    """The primary answers; with DATABASE_READ_URLS, also which replicas serve reads and why
    the others do not."""
    try:
        async with request.state.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # any failure means "not ready"; the detail says why
        raise ProblemException(
            status=503, title="Service Unavailable", detail=f"The database does not answer: {type(exc).__name__}: {exc}"
        ) from None
    replicas = request.state.replicas
    if replicas is None:
        return ok({"status": "ok"})
    # Ready whatever the replicas' state: the primary serves the reads they cannot.
    return ok({"status": "ok", "replicas": replicas.status()})


async def metrics():
    return ConnexionResponse(
        status_code=200, content_type=CONTENT_TYPE_LATEST, body=generate_latest(request.state.metrics.registry)
    )
