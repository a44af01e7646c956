"""Publishing events to Kafka, keyed by trace id (used by `tracker send`)."""

from __future__ import annotations

import json

from aiokafka import AIOKafkaProducer

from tracker.settings import Settings


async def send_one(settings: Settings, event: dict, *, key: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=True, request_timeout_ms=15000)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic, json.dumps(event).encode(), key=key.encode())
    finally:
        await producer.stop()
