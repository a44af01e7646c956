"""Reading a topic back, as an operator's client would; waiting for a group to commit it all."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def read_all(kafka_bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def wait_all_committed(kafka_bootstrap: str, topic: str, group: str, timeout: float = 60) -> None:
    """Until ``group`` has committed every message of ``topic``. The consumer commits a batch
    after its database transaction, so from then on no batch is in flight: nothing more
    will be written, not even a redelivered batch (a fixed sleep could only hope so)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await admin.start()
    await reader.start()
    try:
        [described] = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        assert partitions, f"{topic} has no partitions"
        deadline = time.monotonic() + timeout
        while True:
            ends = await reader.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            # An offset of -1: nothing committed yet (an empty partition stays so).
            behind = {
                tp.partition: ends[tp] - max(committed[tp].offset if tp in committed else 0, 0) for tp in partitions
            }
            if not any(n > 0 for n in behind.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{group} still has messages to commit after {timeout}s: {behind}")
            await asyncio.sleep(0.2)
    finally:
        await reader.stop()
        await admin.close()
