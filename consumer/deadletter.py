"""Dead letters: an invalid message, as it came, with headers that say where from and why."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from tracker.events import Invalid


def dead_letter_headers(record: ConsumerRecord, invalid: Invalid) -> list[tuple[str, bytes]]:
    return [
        ("tracker.source.topic", record.topic.encode()),
        ("tracker.source.partition", str(record.partition).encode()),
        ("tracker.source.offset", str(record.offset).encode()),
        ("tracker.source.timestamp", str(record.timestamp).encode()),
        ("tracker.reason", invalid.reason.encode()),
        # Bounded: the detail quotes part of the message and must not make the dead letter too large.
        ("tracker.detail", invalid.detail[:2000].encode("utf-8", "replace")),
    ]


async def send_dead_letters(producer: AIOKafkaProducer, topic: str,
                            dead: list[tuple[ConsumerRecord, Invalid]]) -> None:
    """Produce every dead letter of a batch and wait until Kafka has them all."""
    futures = []
    for record, invalid in dead:
        value = record.value
        if value is not None and len(value) > 900 * 1024:
            # The original is over the size bound; keep its head so it can still be inspected.
            value = value[:64 * 1024]
        futures.append(await producer.send(topic, value=value, key=record.key,
                                           headers=dead_letter_headers(record, invalid)))
    for future in futures:
        await future
