"""How many events per second does one producer-library instance deliver to Kafka?

Against the local broker (or KAFKA_BOOTSTRAP_SERVERS), each on a fresh topic:
- baseline: one ``send_and_wait`` per event, the way the library drained before;
- ``Tracker``: a burst of ``--events`` emits, timed from the first emit until
  ``flush()`` confirms every event acknowledged by Kafka (acks=all);
- ``SyncTracker``: the same from a plain thread without an event loop.
Delivered counts are read back from the topic's high-water marks, so a figure
cannot come from events that never arrived.

Usage: python -m bench.client [--events 200000] [--baseline-events 3000]
Targets (issue 9): Tracker >= 20,000 events/s, SyncTracker >= 5,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import services
from tracker.client import SyncTracker, Tracker
from tracker.topics import ensure_topics

TRACKER_TARGET = 20_000
SYNC_TARGET = 5_000
BODY = {"files_incoming": ["s3://raw/upload/part-0001.csv"], "files_outgoing": ["s3://clean/upload/p1.parquet"]}


async def topic_size(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        return sum([await consumer.position(tp) for tp in partitions])
    finally:
        await consumer.stop()


async def fresh_topic(bootstrap: str, name: str) -> str:
    topic = f"bench.client.{name}.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], partitions=6)
    return topic


async def one_by_one(bootstrap: str, n: int) -> tuple[float, int]:
    topic = await fresh_topic(bootstrap, "baseline")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    for i in range(n):
        trace = f"trace-{i % 5000}"
        event = {
            "trace_id": trace,
            "event_id": str(uuid.uuid4()),
            "service": "bench",
            "status": "success",
            "timestamp": datetime.now(UTC).isoformat(),
            "operation": "copy",
            "body": BODY,
        }
        await producer.send_and_wait(topic, orjson.dumps(event), key=trace.encode())
    elapsed = time.perf_counter() - started
    await producer.stop()
    return elapsed, await topic_size(bootstrap, topic)


async def async_tracker(bootstrap: str, n: int) -> tuple[float, int, int]:
    topic = await fresh_topic(bootstrap, "async")
    tracker = await Tracker(bootstrap, service="bench", topic=topic, buffer_size=n).start()
    # Connect first: a service's tracker lives for the whole process; the burst is what is timed.
    tracker.emit("warm-up", "received")
    assert await tracker.flush(60), "the broker did not take the warm-up event"
    started = time.perf_counter()
    for i in range(n):
        tracker.emit(f"trace-{i % 5000}", "success", operation="copy", body=BODY)
    assert await tracker.flush(300), "not flushed within 300 s"
    elapsed = time.perf_counter() - started
    unsent = await tracker.close()
    return elapsed, await topic_size(bootstrap, topic) - 1, tracker.dropped + unsent


def sync_tracker(bootstrap: str, topic: str, n: int) -> tuple[float, int]:
    tracker = SyncTracker(bootstrap, service="bench", topic=topic, buffer_size=n)
    tracker.emit("warm-up", "received")
    assert tracker.flush(60), "the broker did not take the warm-up event"
    started = time.perf_counter()
    for i in range(n):
        tracker.emit(f"trace-{i % 5000}", "success", operation="copy", body=BODY)
    assert tracker.flush(300), "not flushed within 300 s"
    elapsed = time.perf_counter() - started
    lost = tracker.dropped + tracker.close()
    return elapsed, lost


async def main_async(args, bootstrap: str) -> None:
    base_s, base_n = await one_by_one(bootstrap, args.baseline_events)
    base_rate = base_n / base_s
    print(f"baseline, one send_and_wait per event: {base_n:,} delivered, {base_rate:,.0f} events/s", flush=True)

    async_s, async_n, async_lost = await async_tracker(bootstrap, args.events)
    async_rate = async_n / async_s
    print(
        f"Tracker: {async_n:,} of {args.events:,} delivered ({async_lost} lost), {async_rate:,.0f} events/s", flush=True
    )

    topic = await fresh_topic(bootstrap, "sync")
    sync_s, sync_lost = await asyncio.to_thread(sync_tracker, bootstrap, topic, args.events)
    sync_n = await topic_size(bootstrap, topic) - 1
    sync_rate = sync_n / sync_s
    print(
        f"SyncTracker: {sync_n:,} of {args.events:,} delivered ({sync_lost} lost), {sync_rate:,.0f} events/s",
        flush=True,
    )

    def verdict(rate: float, target: int, delivered: int) -> str:
        return "met" if rate >= target and delivered == args.events else "NOT met"

    print()
    print(f"producer library, burst of {args.events:,} events to one local broker (acks=all, idempotent)")
    print(f"  baseline, one round trip per event: {base_rate:>10,.0f} events/s")
    print(
        f"  Tracker:                            {async_rate:>10,.0f} events/s   x{async_rate / base_rate:.0f} "
        f"the baseline; target >= {TRACKER_TARGET:,}: {verdict(async_rate, TRACKER_TARGET, async_n)}"
    )
    print(
        f"  SyncTracker:                        {sync_rate:>10,.0f} events/s   x{sync_rate / base_rate:.0f} "
        f"the baseline; target >= {SYNC_TARGET:,}: {verdict(sync_rate, SYNC_TARGET, sync_n)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--baseline-events", type=int, default=3_000)
    args = parser.parse_args()
    with services(postgres=False) as (bootstrap, _):
        asyncio.run(main_async(args, bootstrap))


if __name__ == "__main__":
    main()
