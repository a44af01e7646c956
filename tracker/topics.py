"""Create the Kafka topics the tracker uses (idempotent)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

# Room above TRACKER_MAX_MESSAGE_BYTES for the record's key, headers and batch framing.
_FRAMING_BYTES = 64 * 1024


def record_limit(max_message_bytes: int) -> int:
    """The largest record the tracker's topics take and its producers send: a valid event
    of TRACKER_MAX_MESSAGE_BYTES with its headers, or a dead letter cut to fit."""
    return max_message_bytes + _FRAMING_BYTES


async def ensure_topics(
    bootstrap_servers: str,
    names: list[str],
    partitions: int,
    replication_factor: int = 1,
    *,
    max_message_bytes: int | None = None,
    client_options: dict | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    With ``max_message_bytes``, each topic created takes records up to ``record_limit`` of it
    (the broker's default is 1 MiB whatever TRACKER_MAX_MESSAGE_BYTES says). Existing topics
    keep their configuration: the consumer exits with the broker's refusal if theirs is smaller."""
    configs = {} if max_message_bytes is None else {"max.message.bytes": str(record_limit(max_message_bytes))}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=30000, **(client_options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(n, partitions, replication_factor, topic_configs=configs) for n in missing]
                )
            except TopicAlreadyExistsError:
                pass  # created by someone else meanwhile: that is what we wanted
        return missing
    finally:
        await admin.close()
