"""Helpers for tests that push many events through a real consumer process."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from tests.helpers.factories import encode, pipeline_trace
from tests.helpers.reference import expected_rollups, expected_state, stored_rollups, stored_state
from tracker.events import Event, parse_message


def workload(traces: int, seed: int, prefix: str) -> list[tuple[bytes, bytes]]:
    """(key, value) messages of ``traces`` realistic traces, ~9 events each."""
    rng = random.Random(seed)
    messages = []
    for i in range(traces):
        trace_id = f"{prefix}-{i}"
        for doc in pipeline_trace(
            trace_id, rng, services=rng.randrange(2, 6), fail=rng.random() < 0.2, finish=rng.random() < 0.7
        ):
            messages.append((trace_id.encode(), encode(doc)))
    return messages


def valid_events(messages: Sequence[tuple[bytes | None, bytes | None]]) -> list[Event]:
    parsed = [parse_message(value, max_bytes=1 << 20) for _, value in messages]
    return [p for p in parsed if isinstance(p, Event)]


async def produce(bootstrap: str, topic: str, messages, rate: float | None = None) -> None:
    """Produce every message (acks=all); at ``rate`` messages/s when given."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=4 << 20,
    )
    await producer.start()
    try:
        started = time.monotonic()
        for i, (key, value) in enumerate(messages):
            await producer.send(topic, value, key=key)
            if rate and i % 50 == 0:
                ahead = i / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()


async def wait_until(condition, what: str, timeout: float = 60, process=None):
    """Poll ``condition()`` (sync) until it returns something true, and return that; fail loudly
    with ``what`` after ``timeout`` s or when ``process`` dies meanwhile."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if process is not None and not process.alive:
            raise AssertionError(f"the consumer died waiting for {what}:\n{process.log()[-5000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout}s: {what}")
        await asyncio.sleep(0.1)
    return result


async def wait_stored(db, count: int, timeout: float = 120, process=None) -> None:
    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline:
        stored = await db.fetchval("SELECT count(*) FROM events")
        if stored >= count:
            return
        if process is not None and not process.alive:
            raise AssertionError(f"the consumer died with {stored}/{count} events stored:\n{process.log()[-5000:]}")
        await asyncio.sleep(0.2)
    raise AssertionError(f"only {stored} of {count} events stored after {timeout}s")


async def kill_at_shares(launch, settings, db, total: int, shares: tuple[float, ...]) -> None:
    """Start a consumer and SIGKILL it when each share of ``total`` events is stored: killed
    mid-ingest by construction, whatever the machine's speed."""
    for round_, share in enumerate(shares):
        consumer = await launch.consumer(settings, name=f"consumer-{round_}")
        await wait_stored(db, int(total * share), process=consumer)
        consumer.kill()


async def assert_exactly_once(db, events: list[Event]) -> None:
    """Every valid event stored once, and every derived number equal to a from-scratch computation."""
    unique = {e.event_id for e in events}
    stored = {r["event_id"] for r in await db.fetch("SELECT event_id FROM events")}
    assert stored == unique, f"missing {len(unique - stored)}, unexpected {len(stored - unique)}"
    want_traces, want_services = expected_state(events)
    traces, services = await stored_state(db)
    assert len(traces) == len(want_traces)
    wrong = [t for t in want_traces if traces.get(t) != want_traces[t]]
    assert not wrong, f"{len(wrong)} traces differ, e.g. {wrong[0]}: {traces.get(wrong[0])} != {want_traces[wrong[0]]}"
    assert services == want_services
    assert await stored_rollups(db) == expected_rollups(events)
