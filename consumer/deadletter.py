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


# What a record costs beyond its key, value and header bytes (record and batch framing,
# varints): far less than this, so a dead letter cut to fit is never refused for its size.
_OVERHEAD_BYTES = 1024


def fit_dead_letter(record: ConsumerRecord, invalid: Invalid,
                    limit: int) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The dead letter's value and headers, the value cut so that the record fits in ``limit``
    (the producer's max_request_size, also the topics' max.message.bytes, see
    tracker.topics.record_limit). A cut value keeps its head, and a header gives the
    original length, so that the message can still be recognised and inspected."""
    headers = dead_letter_headers(record, invalid)
    value = record.value
    if value is None:
        return value, headers
    key_bytes = len(record.key or b"")
    header_bytes = sum(len(k) + len(v) for k, v in headers) + 64  # with the truncation header
    budget = limit - key_bytes - header_bytes - _OVERHEAD_BYTES
    if len(value) > budget:
        headers.append(("tracker.truncated_from_bytes", str(len(value)).encode()))
        value = value[:max(0, budget)]
    return value, headers


async def send_dead_letters(producer: AIOKafkaProducer, topic: str,
                            dead: list[tuple[ConsumerRecord, Invalid]], *, limit: int) -> None:
    """Produce every dead letter of a batch and wait until Kafka has them all."""
    futures = []
    for record, invalid in dead:
        value, headers = fit_dead_letter(record, invalid, limit)
        futures.append(await producer.send(topic, value=value, key=record.key, headers=headers))
    for future in futures:
        await future
