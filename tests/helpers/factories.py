"""Events in each wire format, for tests."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

from tracker.events import Event, parse_message

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def payload_tracker(request_id: str, service: str, status: str, at: datetime, **extra) -> dict:
    return {"service": service, "request_id": request_id, "status": status, "date": at.isoformat(), **extra}


def status_api(trace_id: str, component: str, ok: bool, at: datetime, **extra) -> dict:
    return {
        "trace_id": trace_id,
        "trace_event_id": str(uuid.uuid4()),
        "component": component,
        "trace_event_status": "OK" if ok else "FAILED",
        "start_time": (at - timedelta(seconds=1)).isoformat(),
        "end_time": at.isoformat(),
        **extra,
    }


def tracker_event(trace_id: str, service: str, status: str, at: datetime, **extra) -> dict:
    return {"trace_id": trace_id, "service": service, "status": status, "timestamp": at.isoformat(), **extra}


def encode(doc) -> bytes:
    return json.dumps(doc).encode()


def pipeline_trace(
    trace_id: str, rng: random.Random, services: int = 4, fail: bool = False, finish: bool = True
) -> list[dict]:
    """A realistic trace: each service receives then succeeds; optionally one fails; optionally finished."""
    at = BASE + timedelta(seconds=rng.randrange(0, 86400))
    docs = []
    failed_at = rng.randrange(services) if fail else -1
    for i in range(services):
        name = f"svc{i}"
        docs.append(payload_tracker(trace_id, name, "received", at))
        at += timedelta(milliseconds=rng.randrange(1, 5000))
        if i == failed_at:
            docs.append(payload_tracker(trace_id, name, "error", at, status_msg=f"{name} broke"))
            break
        docs.append(payload_tracker(trace_id, name, "success", at))
        at += timedelta(milliseconds=rng.randrange(1, 500))
    if finish:
        docs.append(tracker_event(trace_id, "pipeline", "error" if fail else "success", at, trace_status="FINISHED"))
    return docs


def with_status_step(docs: list[dict], rng: random.Random) -> list[dict]:
    """The trace's docs plus a Status API step of its first service that ends up to 1.5 s
    after the trace's first event: its start_time (1 s earlier) is often the earliest time
    of both the service and the trace."""
    first = docs[0]
    at = datetime.fromisoformat(first["date"]) + timedelta(milliseconds=rng.randrange(0, 1500))
    # A deterministic id (examples that share a database and a seed make the same event),
    # unique per trace (event ids are global: another trace's equal id is a duplicate).
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{first['request_id']}/{rng.getrandbits(64)}")
    return docs + [
        status_api(first["request_id"], first["service"], rng.random() < 0.8, at, trace_event_id=str(event_id))
    ]


def event_of(value: bytes) -> Event:
    """A message that must be valid, as its Event (the test fails, saying why, if it is not)."""
    parsed = parse_message(value, max_bytes=1 << 20)
    assert isinstance(parsed, Event), parsed
    return parsed


def events_of(docs) -> list[Event]:
    return [event_of(encode(doc)) for doc in docs]
