"""Reading a topic back, as an operator's client would."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer


async def read_all(kafka_bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records
