"""Asking the API process, as a client would."""

from __future__ import annotations

import asyncio
import time

import aiohttp


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
