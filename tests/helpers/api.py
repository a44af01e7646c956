"""Asking the API: the process, as a client would, or the application in the test's own process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import aiohttp
from starlette.testclient import TestClient

from tracker.api.app import create_app
from tracker.settings import Settings


async def get_json(url: str) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            return response.status, await response.json(content_type=None), response.headers["Content-Type"]


async def wait_for_trace(api_url: str, trace_id: str, events: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        code, body, _ = await get_json(f"{api_url}/v1/traces/{trace_id}")
        if code == 200 and body["event_count"] >= events:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"trace {trace_id} did not reach {events} events: {body}")


@contextlib.contextmanager
def api_client(settings: Settings) -> Iterator[TestClient]:
    """Connexion's test client over the real application: its lifespan runs (the database pool,
    the Kafka producer when one is configured), its middlewares validate parameters and, as
    ``settings`` asks in tests, responses; only the HTTP server and the process are left out.
    The client runs the application on an event loop in its own thread, so an async test may
    call it (it blocks that test's loop for the request, which nothing else there waits on)."""
    app = create_app(settings, validate_responses=settings.api_validate_responses)
    with app.test_client() as client:
        yield client
