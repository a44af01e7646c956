"""The consumer's own small HTTP server (aiohttp): /healthz, /readyz, /metrics."""

from __future__ import annotations

import time

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.metrics import ConsumerMetrics


def health_app(metrics: ConsumerMetrics, pool: asyncpg.Pool, sink) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        # Alive while the loop polls; a loop stuck for 5 minutes outside a retry is not.
        stuck = time.monotonic() - sink.last_poll > 300 and not sink.paused
        return web.json_response({"status": "stuck" if stuck else "ok"}, status=503 if stuck else 200)

    async def readyz(request: web.Request) -> web.Response:
        try:
            async with pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # any failure means "not ready", and says why
            return web.json_response({"status": "unavailable", "detail": f"database: {exc}"}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app
