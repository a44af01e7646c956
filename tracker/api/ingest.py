"""Handlers for POST /v1/events and POST /v1/traces: validate, then produce to Kafka."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import orjson
from aiokafka.errors import KafkaError
from connexion import request

from tracker.api.problems import ProblemException, ok
from tracker.events import Invalid, parse_document


def _producer():
    producer = request.state.producer
    if producer is None:
        raise ProblemException(status=503, title="Service Unavailable",
                               detail="HTTP ingestion needs Kafka, and KAFKA_BOOTSTRAP_SERVERS is not set for this API.")
    return producer


async def _send(doc: dict, trace_id: str) -> None:
    settings = request.state.settings
    value = orjson.dumps(doc)
    if len(value) > settings.max_message_bytes:
        raise ProblemException(status=413, title="Payload Too Large",
                               detail=f"the event is {len(value)} bytes; the limit is {settings.max_message_bytes}")
    try:
        await asyncio.wait_for(_producer().send(value, key=trace_id), timeout=10)
    except (KafkaError, asyncio.TimeoutError) as exc:
        # Nothing half-done: the event either reached Kafka (202) or it did not (503, retry).
        raise ProblemException(status=503, title="Service Unavailable",
                               detail=f"Kafka did not take the event ({type(exc).__name__}); nothing was stored, "
                                      "retry later.", headers={"Retry-After": "5"}) from None


async def post_event(body):
    parsed = parse_document(body)
    if isinstance(parsed, Invalid):
        raise ProblemException(status=400, title="Bad Request", detail=f"invalid event ({parsed.reason}): {parsed.detail}")
    await _send(body, parsed.trace_id)
    return ok({"trace_id": parsed.trace_id, "event_id": parsed.event_id, "topic": request.state.settings.topic},
              status=202)


async def post_trace(body):
    trace_id = str(uuid.uuid4())
    event = {"trace_id": trace_id, "event_id": str(uuid.uuid4()), "status": "received", "trace_status": "STARTED",
             "timestamp": datetime.now(timezone.utc).isoformat(), **body}
    parsed = parse_document(event)
    if isinstance(parsed, Invalid):
        raise ProblemException(status=400, title="Bad Request", detail=f"invalid trace ({parsed.reason}): {parsed.detail}")
    await _send(event, trace_id)
    return ok({"trace_id": trace_id, "event_id": parsed.event_id, "topic": request.state.settings.topic}, status=201)
