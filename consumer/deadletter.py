"""Dead letters: an invalid message, as it came, with headers that say where from and why.

Recorded in the dead_letters table in the transaction that writes its batch's events
(consumer/store.py), so a crash and a redelivery can never record one twice; then
published to the dead-letter topic from that table (publish_pending), and marked. A crash
between Kafka's acknowledgement and the mark is the one way a dead letter reaches the topic
twice; the headers carry its source position, by which a reader can tell.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from tracker.db import Connection
from tracker.events import Invalid

log = logging.getLogger("tracker.consumer")

# Bounded: the detail quotes part of the message and must not make the dead letter too large.
DETAIL_CHARS = 2000

# What a record costs beyond its key, value and header bytes (record and batch framing,
# varints): far less than this, so a dead letter cut to fit is never refused for its size.
_OVERHEAD_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One row of dead_letters, in the order of COLUMNS."""

    topic: str
    partition: int
    offset: int
    message_at: datetime | None
    reason: str
    detail: str
    key: bytes | None
    value: bytes | None  # cut to fit the dead-letter topic
    size: int | None  # the original value's length

    def headers(self) -> list[tuple[str, bytes]]:
        out = [
            ("tracker.source.topic", self.topic.encode()),
            ("tracker.source.partition", str(self.partition).encode()),
            ("tracker.source.offset", str(self.offset).encode()),
            ("tracker.source.timestamp", str(_millis(self.message_at)).encode()),
            ("tracker.reason", self.reason.encode()),
            ("tracker.detail", self.detail.encode("utf-8", "replace")),
        ]
        if self.value is not None and self.size is not None and len(self.value) < self.size:
            out.append(("tracker.truncated_from_bytes", str(self.size).encode()))
        return out


COLUMNS = tuple(f.name for f in dataclasses.fields(DeadLetter))


def _millis(at: datetime | None) -> int:
    return -1 if at is None else round(at.timestamp() * 1000)


def dead_letter(record: ConsumerRecord, invalid: Invalid, limit: int) -> DeadLetter:
    """The dead letter of ``record``, its value cut so that the record fits in ``limit`` (the
    producer's max_request_size, also the topics' max.message.bytes, see
    tracker.topics.record_limit). A cut value keeps its head, and a header gives the original
    length, so that the message can still be recognised and inspected."""
    known = record.timestamp is not None and record.timestamp >= 0  # None or -1: the producer gave none
    at = datetime.fromtimestamp(record.timestamp / 1000, UTC) if known else None
    letter = DeadLetter(
        record.topic,
        record.partition,
        record.offset,
        at,
        invalid.reason,
        invalid.detail[:DETAIL_CHARS],
        record.key,
        record.value,
        None if record.value is None else len(record.value),
    )
    if letter.value is None:
        return letter
    header_bytes = sum(len(k) + len(v) for k, v in letter.headers()) + 64  # with the truncation header
    budget = limit - len(record.key or b"") - header_bytes - _OVERHEAD_BYTES
    if len(letter.value) > budget:
        letter = dataclasses.replace(letter, value=letter.value[: max(0, budget)])
    return letter


RECORD = f"""
INSERT INTO dead_letters ({", ".join(f'"{c}"' for c in COLUMNS)})
SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[],
                     $7::bytea[], $8::bytea[], $9::integer[])
ON CONFLICT (topic, "partition", "offset") DO NOTHING
"""


async def record_dead_letters(conn: Connection, letters: list[DeadLetter]) -> None:
    """In the caller's transaction; a redelivered message's dead letter is already there."""
    if letters:
        await conn.execute(RECORD, *([getattr(d, c) for d in letters] for c in COLUMNS))


PENDING = f"""
SELECT id, {", ".join(f'"{c}"' for c in COLUMNS)} FROM dead_letters WHERE published_at IS NULL
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""


async def publish_pending(pool: asyncpg.Pool, producer: AIOKafkaProducer, topic: str, *, batch: int = 1000) -> int:
    """Produce the dead letters not published yet and mark them; returns how many. Rows stay
    locked while Kafka takes them, so two consumers never publish the same one (SKIP LOCKED:
    each takes what the other is not at). An error leaves the rest for the next round."""
    published = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(PENDING, batch)
            if not rows:
                return published
            futures = []
            for row in rows:
                letter = DeadLetter(*(row[c] for c in COLUMNS))
                futures.append(await producer.send(topic, value=letter.value, key=letter.key, headers=letter.headers()))
            for future in futures:
                await future
            await conn.execute(
                "UPDATE dead_letters SET published_at = now() WHERE id = ANY($1::bigint[])", [row["id"] for row in rows]
            )
        published += len(rows)
