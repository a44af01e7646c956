"""Kafka producers of this project: the one start every producer shares, and the publisher that
sends one validated message and waits for Kafka's acknowledgement (`POST /v1/events`, `tracker
send`).

The other producer is ``tracker.client.Tracker``, the library services embed: it never waits
(events go into a bounded buffer that a background task hands to Kafka in batches) and drops
rather than block its service. Both start their Kafka producer with ``start_producer``."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from tracker.kafka import client_options
from tracker.settings import Settings


async def start_producer(bootstrap_servers: str, **options) -> AIOKafkaProducer:
    """A started producer; a failed start stops it again, so no connection or task leaks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, **options)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


class EventPublisher:
    """Publish one message at a time and wait for its acknowledgement, so that the caller can
    answer "accepted" only once Kafka has it. The producer is started on first use and again
    after a failed start, so that a process that only sometimes publishes (the API) starts, and
    recovers, without Kafka."""

    def __init__(self, settings: Settings) -> None:
        if not settings.kafka_bootstrap_servers:
            raise ValueError("EventPublisher needs KAFKA_BOOTSTRAP_SERVERS")
        self.settings = settings
        self.bootstrap_servers: str = settings.kafka_bootstrap_servers
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                self._producer = await start_producer(
                    self.bootstrap_servers,
                    **client_options(self.settings),
                    acks="all",
                    enable_idempotence=True,
                    request_timeout_ms=10000,
                    max_request_size=self.settings.max_message_bytes + 64 * 1024,
                )
            return self._producer

    async def send(self, value: bytes, *, key: str) -> None:
        producer = await self._started()
        await producer.send_and_wait(self.settings.topic, value, key=key.encode())

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def send_one(settings: Settings, value: bytes, *, key: str) -> None:
    """Publish one message and wait for Kafka's acknowledgement (`tracker send`)."""
    publisher = EventPublisher(settings)
    try:
        await publisher.send(value, key=key)
    finally:
        await publisher.close()
