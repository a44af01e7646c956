"""HTTP ingestion's common part: an event checked by the consumer's own parser, then produced
to Kafka; nothing is written to the database here (the consumer stores it, as any event)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError
from connexion import request

from tracker.api import tenancy
from tracker.api.problems import ProblemException
from tracker.events import Event, Invalid, encode_document, parse_message


async def validated(doc, what: str) -> tuple[bytes, Event]:
    """The bytes to produce, judged exactly as the consumer will judge them; and, for a token
    bound to tenants, only an event of its tenants, on a trace that is not another tenant's."""
    value = encode_document(doc)
    parsed = parse_message(value, max_bytes=request.state.settings.max_message_bytes)
    if isinstance(parsed, Invalid):
        if parsed.reason == "too_large":
            raise ProblemException(status=413, title="Payload Too Large", detail=parsed.detail)
        raise ProblemException(
            status=400, title="Bad Request", detail=f"invalid {what} ({parsed.reason}): {parsed.detail}"
        )
    await tenancy.check_publish(parsed)
    return value, parsed


async def send(value: bytes, trace_id: str) -> None:
    producer = request.state.producer
    if producer is None:
        raise ProblemException(
            status=503,
            title="Service Unavailable",
            detail="HTTP ingestion needs Kafka, and KAFKA_BOOTSTRAP_SERVERS is not set for this API.",
        )
    try:
        await asyncio.wait_for(producer.send(value, key=trace_id), timeout=10)
    except (TimeoutError, KafkaError) as exc:
        # Nothing half-done: the event either reached Kafka (202) or it did not (503, retry).
        raise ProblemException(
            status=503,
            title="Service Unavailable",
            detail=f"Kafka did not take the event ({type(exc).__name__}); nothing was stored, retry later.",
            headers={"Retry-After": "5"},
        ) from None
