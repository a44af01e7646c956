"""Handlers for POST /v1/events and POST /v1/traces: validate, then produce to Kafka."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

from aiokafka.errors import KafkaError
from connexion import request

from tracker.api.problems import ProblemException, ok
from tracker.events import Event, Invalid, encode_document, parse_message


def _producer():
    producer = request.state.producer
    if producer is None:
        raise ProblemException(status=503, title="Service Unavailable",
                               detail="HTTP ingestion needs Kafka, and KAFKA_BOOTSTRAP_SERVERS is not set for this API.")
    return producer


def _validated(doc, what: str) -> tuple[bytes, Event]:
    """The bytes to produce, checked by the consumer's own parser."""
    value = encode_document(doc)
    parsed = parse_message(value, max_bytes=request.state.settings.max_message_bytes)
    if isinstance(parsed, Invalid):
        if parsed.reason == "too_large":
            raise ProblemException(status=413, title="Payload Too Large", detail=parsed.detail)
        raise ProblemException(status=400, title="Bad Request", detail=f"invalid {what} ({parsed.reason}): {parsed.detail}")
    return value, parsed


async def _send(value: bytes, trace_id: str) -> None:
    try:
        await asyncio.wait_for(_producer().send(value, key=trace_id), timeout=10)
    except (KafkaError, asyncio.TimeoutError) as exc:
        # Nothing half-done: the event either reached Kafka (202) or it did not (503, retry).
        raise ProblemException(status=503, title="Service Unavailable",
                               detail=f"Kafka did not take the event ({type(exc).__name__}); nothing was stored, "
                                      "retry later.", headers={"Retry-After": "5"}) from None


async def post_event(body):
    value, parsed = _validated(body, "event")
    await _send(value, parsed.trace_id)
    return ok({"trace_id": parsed.trace_id, "event_id": parsed.event_id, "topic": request.state.settings.topic},
              status=202)


async def post_trace(body):
    trace_id = str(uuid.uuid4())
    event = {"trace_id": trace_id, "event_id": str(uuid.uuid4()), "status": "received", "trace_status": "STARTED",
             "timestamp": datetime.now(timezone.utc).isoformat(), **body}
    value, parsed = _validated(event, "trace")
    await _send(value, trace_id)
    # 202, not 201: the trace exists once the consumer has stored this event, a moment later.
    return ok({"trace_id": trace_id, "event_id": parsed.event_id, "topic": request.state.settings.topic},
              status=202, headers={"Location": f"/v1/traces/{trace_id}"})
