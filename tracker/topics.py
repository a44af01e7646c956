"""Create the Kafka topics the tracker uses (idempotent)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topics(bootstrap_servers: str, names: list[str], partitions: int,
                        replication_factor: int = 1) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics([NewTopic(n, partitions, replication_factor) for n in missing])
            except TopicAlreadyExistsError:
                pass  # created by someone else meanwhile: that is what we wanted
        return missing
    finally:
        await admin.close()
