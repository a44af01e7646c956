"""The consumer under failure, with real processes: crashes, outages, rebalances, garbage.
Nothing lost, nothing duplicated, every derived number right."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import time

import aiohttp
import pytest

from tests.helpers.ingest import (
    assert_exactly_once,
    kill_at_shares,
    produce,
    valid_events,
    wait_stored,
    wait_until,
    workload,
)
from tests.helpers.kafka import read_all, wait_all_committed
from tracker.devservices.ports import free_port
from tracker.topics import ensure_topics


async def test_kill_9_mid_ingest_loses_and_duplicates_nothing(settings, launch, db, kafka_bootstrap):
    messages = workload(traces=3000, seed=7, prefix="kill")
    events = valid_events(messages)
    settings = dataclasses.replace(settings, batch_max_records=300, log_level="INFO")
    await produce(kafka_bootstrap, settings.topic, messages)
    total = len({e.event_id for e in events})
    await kill_at_shares(launch, settings, db, total, (0.1, 0.3, 0.5, 0.7))
    stored_before_last = await db.fetchval("SELECT count(*) FROM events")
    consumer = await launch.consumer(settings, name="consumer-last")
    await wait_stored(db, total, process=consumer)
    assert int(total * 0.7) <= stored_before_last < total, "the last kill did not land mid-ingest"
    # Every batch committed: none in flight, so a redelivered one has landed (and must change nothing).
    await wait_all_committed(kafka_bootstrap, settings.topic, settings.consumer_group)
    await assert_exactly_once(db, events)


async def test_postgres_restart_mid_ingest_is_survived_without_a_restart(
    settings, launch, db, kafka_bootstrap, local_postgres
):
    if local_postgres is None:
        pytest.skip("DATABASE_URL names a server this suite cannot restart")
    messages = workload(traces=2000, seed=11, prefix="pg")
    events = valid_events(messages)
    settings = dataclasses.replace(settings, batch_max_records=200, retry_max_seconds=2, log_level="INFO")
    total = len({e.event_id for e in events})
    consumer = await launch.consumer(settings)
    producing = asyncio.create_task(produce(kafka_bootstrap, settings.topic, messages, rate=4000))
    # Mid-ingest by construction: stopped once a tenth is stored, before the rest is.
    await wait_stored(db, total // 10, process=consumer)
    stored_before = await db.fetchval("SELECT count(*) FROM events")
    assert stored_before < total, "the outage did not land mid-ingest"
    await db.close()
    await asyncio.to_thread(local_postgres.stop)
    # Down until the consumer has met the outage (it retries meanwhile; nothing is committed).
    await wait_until(
        lambda: "database unavailable" in consumer.log(), "the consumer retrying the database", process=consumer
    )
    await asyncio.to_thread(local_postgres.restart)
    await producing

    import asyncpg

    from tracker.db import init_connection

    conn = await asyncpg.connect(settings.database_url)
    await init_connection(conn)
    try:
        await wait_stored(conn, total, process=consumer)
        await assert_exactly_once(conn, events)
    finally:
        await conn.close()
    assert consumer.alive, "the consumer should recover by itself"


async def test_kafka_broker_restart_mid_ingest_is_survived_without_a_restart(
    settings, launch, db, kafka_bootstrap, local_kafka
):
    if local_kafka is None:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS names a broker this suite cannot restart")
    messages = workload(traces=2000, seed=13, prefix="kafka")
    events = valid_events(messages)
    half = len(messages) // 2
    settings = dataclasses.replace(settings, batch_max_records=200, retry_max_seconds=2, log_level="INFO")
    consumer = await launch.consumer(settings)
    await produce(kafka_bootstrap, settings.topic, messages[:half])
    await wait_stored(db, 1, process=consumer)  # consuming: the restart lands mid-ingest
    await asyncio.to_thread(local_kafka.restart)
    await produce(kafka_bootstrap, settings.topic, messages[half:])
    await wait_stored(db, len({e.event_id for e in events}), timeout=180, process=consumer)
    await wait_all_committed(kafka_bootstrap, settings.topic, settings.consumer_group)
    await assert_exactly_once(db, events)
    assert consumer.alive


async def assigned_partitions(port: int) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    match = re.search(r"^tracker_consumer_assigned_partitions (\S+)$", text, re.M)
    assert match, text
    return int(float(match.group(1)))


async def test_two_consumers_share_the_work_and_survive_one_being_killed(settings, launch, db, kafka_bootstrap):
    messages = workload(traces=3000, seed=17, prefix="pair")
    events = valid_events(messages)
    settings = dataclasses.replace(settings, batch_max_records=200, log_level="INFO")
    first = await launch.consumer(settings, name="first")
    second_settings = dataclasses.replace(settings, consumer_port=free_port())
    second = await launch.consumer(second_settings, name="second")
    producing = asyncio.create_task(produce(kafka_bootstrap, settings.topic, messages, rate=5000))
    deadline = time.monotonic() + 30
    while (
        shares := (
            await assigned_partitions(settings.consumer_port),
            await assigned_partitions(second_settings.consumer_port),
        )
    ) != (1, 2) and shares != (2, 1):
        assert time.monotonic() < deadline, f"the two consumers never split the 3 partitions: {shares}"
        await asyncio.sleep(0.2)
    await wait_stored(db, 2000, process=second)
    first.kill()
    await producing
    await wait_stored(db, len({e.event_id for e in events}), timeout=180, process=second)
    # The survivor took over the dead one's partitions (not only kept its own).
    assert await assigned_partitions(second_settings.consumer_port) == 3
    await wait_all_committed(kafka_bootstrap, settings.topic, settings.consumer_group)
    await assert_exactly_once(db, events)


async def test_three_consumers_on_six_partitions_one_joining_and_one_leaving_mid_ingest(
    settings, launch, db, kafka_bootstrap
):
    """The group grows and shrinks while events flow: a third member joins (the partitions are
    dealt out again, 2 each), then one leaves cleanly (SIGTERM: it finishes and commits its
    batches in flight, and the two left take its partitions). Every event is stored once and
    the derived state equals the from-scratch computation."""
    topic = f"{settings.topic}.six"
    await ensure_topics(kafka_bootstrap, [topic, f"{topic}.dlq"], partitions=6)
    settings = dataclasses.replace(
        settings, topic=topic, dlq_topic=f"{topic}.dlq", batch_max_records=200, log_level="INFO"
    )
    messages = workload(traces=4000, seed=31, prefix="three")
    events = valid_events(messages)
    total = len({e.event_id for e in events})
    ports = [settings.consumer_port, free_port(), free_port()]
    members = [dataclasses.replace(settings, consumer_port=port) for port in ports]

    async def shares(which: list[int]) -> list[int]:
        return [await assigned_partitions(ports[i]) for i in which]

    async def wait_shares(which: list[int], expected: list[int]) -> None:
        deadline = time.monotonic() + 60
        while (now := await shares(which)) != expected:
            assert time.monotonic() < deadline, f"members {which} hold {now} partitions, not {expected}"
            await asyncio.sleep(0.2)

    first = await launch.consumer(members[0], name="first")
    second = await launch.consumer(members[1], name="second")
    producing = asyncio.create_task(produce(kafka_bootstrap, topic, messages, rate=2000))
    await wait_shares([0, 1], [3, 3])
    await wait_stored(db, total // 10, process=first)

    third = await launch.consumer(members[2], name="third")
    await wait_shares([0, 1, 2], [2, 2, 2])
    stored = await db.fetchval("SELECT count(*) FROM events")
    assert stored < total, "the third member joined after the ingest was over"
    await wait_stored(db, stored + total // 10, process=third)

    assert second.terminate() == 0
    await wait_shares([0, 2], [3, 3])
    assert await db.fetchval("SELECT count(*) FROM events") < total, "the second member left after the ingest was over"

    await producing
    await wait_stored(db, total, timeout=180, process=third)
    await wait_all_committed(kafka_bootstrap, topic, settings.consumer_group)
    await assert_exactly_once(db, events)
    assert first.alive and third.alive


def malformed(rng: random.Random, valid: bytes) -> bytes | None:
    """One broken message, built from a valid one by a random kind of damage."""
    doc = json.loads(valid)
    required = [k for k in ("service", "request_id", "trace_id", "status", "date", "timestamp") if k in doc]
    trace_key = "request_id" if "request_id" in doc else "trace_id"
    kind = rng.randrange(10)
    if kind == 0:
        return valid[: rng.randrange(1, len(valid) - 1)]  # truncated JSON
    if kind == 1:
        return b"\xff" + valid  # not UTF-8
    if kind == 2:
        return None  # tombstone
    if kind == 3:
        del doc[rng.choice(required)]
    elif kind == 4:
        doc[rng.choice(required)] = rng.choice([1, 2.5, True, [], {}])
    elif kind == 5:
        doc[trace_key] = "x" * 300
    elif kind == 6:
        doc["status_msg"] = "y" * (1 << 20)  # over the 1 MiB bound
    elif kind == 7:
        nested: object = 1
        for _ in range(rng.randrange(40, 400)):
            nested = [nested]
        doc["status_msg"] = nested
    elif kind == 8:
        doc[rng.choice(required)] = "nul\x00inside"  # PostgreSQL cannot store U+0000
    else:
        return json.dumps(rng.choice([[doc], "text", 42, None])).encode()
    return json.dumps(doc).encode()


async def test_thousands_of_malformed_messages_are_dead_lettered_and_cost_no_valid_event(
    settings, launch, db, kafka_bootstrap
):
    rng = random.Random(23)
    good = workload(traces=300, seed=23, prefix="mixed")
    messages: list[tuple[bytes, bytes | None]] = []
    for key, value in good:
        messages.append((key, value))
        for _ in range(rng.randrange(0, 5)):
            messages.append((key, malformed(rng, value)))
    events = valid_events(messages)
    invalid = len(messages) - len(events)
    assert invalid >= 2000
    consumer = await launch.consumer(dataclasses.replace(settings, log_level="INFO"))
    await produce(kafka_bootstrap, settings.topic, messages)
    await wait_stored(db, len({e.event_id for e in events}), process=consumer)
    dead = await read_all(kafka_bootstrap, settings.dlq_topic, invalid, timeout=60)
    assert len(dead) == invalid
    reasons = {dict(r.headers)["tracker.reason"].decode() for r in dead}
    assert {
        "not_json",
        "not_utf8",
        "null_value",
        "missing_field",
        "wrong_type",
        "too_long",
        "too_large",
        "too_deep",
        "not_object",
        "nul_character",
    } <= reasons
    await assert_exactly_once(db, events)
    assert consumer.alive


async def test_two_writers_store_traces_that_span_partitions_exactly_once(settings, launch, db, kafka_bootstrap):
    """A producer that does not key by trace id: one trace's events land on every partition,
    so both writers of one consumer update the same traces and rollup rows concurrently.
    Their lock order (events by id, traces by id, rollup keys sorted) must leave no lost
    update and no deadlock that stalls them."""
    messages = [(None, value) for _, value in workload(traces=1500, seed=29, prefix="spread")]
    events = valid_events(messages)
    settings = dataclasses.replace(settings, consumer_writers=2, batch_max_records=300, log_level="INFO")
    consumer = await launch.consumer(settings)
    await produce(kafka_bootstrap, settings.topic, messages)
    await wait_stored(db, len({e.event_id for e in events}), process=consumer)
    await wait_all_committed(kafka_bootstrap, settings.topic, settings.consumer_group)
    await assert_exactly_once(db, events)
    assert "deadlock" not in consumer.log().lower()


async def test_kill_9_mid_ingest_records_each_dead_letter_once_and_publishes_them_all(
    settings, launch, db, kafka_bootstrap
):
    rng = random.Random(29)
    messages: list[tuple[bytes, bytes | None]] = []
    for key, value in workload(traces=600, seed=29, prefix="dl-kill"):
        messages.append((key, value))
        if rng.random() < 0.3:
            messages.append((key, malformed(rng, value)))
    events = valid_events(messages)
    invalid = len(messages) - len(events)
    settings = dataclasses.replace(settings, batch_max_records=100, log_level="INFO")
    await produce(kafka_bootstrap, settings.topic, messages)
    total = len({e.event_id for e in events})
    await kill_at_shares(launch, settings, db, total, (0.2, 0.4, 0.6, 0.8))
    consumer = await launch.consumer(settings, name="consumer-last")
    await wait_stored(db, total, process=consumer)
    deadline = time.monotonic() + 60
    while await db.fetchval("SELECT count(*) FROM dead_letters WHERE published_at IS NOT NULL") < invalid:
        assert time.monotonic() < deadline, "dead letters left unpublished"
        await asyncio.sleep(0.2)
    # Recorded once each, with its batch: one row per invalid message, whatever the kills.
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == invalid
    # All on the topic. A copy more is possible only for a kill between Kafka's acknowledgement
    # and the mark (the rows of one publishing round); the old way sent a batch's again on every
    # redelivery.
    dead = await read_all(kafka_bootstrap, settings.dlq_topic, 2 * invalid, timeout=10)  # all there is
    positions = {(dict(r.headers)["tracker.source.partition"], dict(r.headers)["tracker.source.offset"]) for r in dead}
    assert len(positions) == invalid
    await assert_exactly_once(db, events)
