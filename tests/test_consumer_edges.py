"""The consumer at its edges: dead letters too large for Kafka, refusals that no retry
can fix, a flood of invalid messages, partitions moving between consumers, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from prometheus_client.parser import text_string_to_metric_families

from consumer.metrics import ConsumerMetrics
from consumer.service import _init_connection
from consumer.sink import Sink
from tests.helpers.factories import encode, payload_tracker
from tests.helpers.ingest import produce, wait_stored
from tests.helpers.kafka import read_all, wait_all_committed
from tracker.db import create_pool
from tracker.devservices.ports import free_port
from tracker.maintenance import PRECREATE_DAYS, create_partition, existing_partitions, partition_name


async def scrape(port: int) -> dict[str, list]:
    """The consumer's /metrics as {metric name: [samples]}."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def gauge(metrics: dict[str, list], name: str) -> float:
    return metrics[name][0].value


def partitions_exported(metrics: dict[str, list], name: str) -> set[str]:
    return {sample.labels["partition"] for sample in metrics.get(name, [])}


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


def good_messages(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC)
    return [
        (f"{prefix}-{i}".encode(), encode(payload_tracker(f"{prefix}-{i}", "ingress", "received", now)))
        for i in range(n)
    ]


def test_only_errors_that_can_succeed_on_retry_are_retried():
    from consumer.sink import is_transient

    assert is_transient(KafkaConnectionError())
    assert is_transient(NotLeaderForPartitionError())
    assert is_transient(KafkaTimeoutError())
    assert is_transient(TimeoutError())
    assert is_transient(asyncpg.exceptions.CannotConnectNowError())
    assert not is_transient(MessageSizeTooLargeError())
    assert not is_transient(TopicAuthorizationFailedError())
    assert not is_transient(asyncpg.exceptions.UndefinedTableError())


async def test_a_dead_letter_larger_than_the_producer_takes_is_cut_to_fit_and_the_partition_moves_on(
    settings, launch, db, kafka_bootstrap
):
    # A 10 kB bound: the dead-letter producer takes 10 kB + 64 KiB; the original is 300 kB.
    settings = dataclasses.replace(settings, max_message_bytes=10_000)
    huge = b'{"service": "x", "padding": "' + b"y" * 300_000 + b'"}'
    good = good_messages("after-huge", 20)
    consumer = await launch.consumer(settings)
    await produce(kafka_bootstrap, settings.topic, [(b"k", huge)] + good)
    await wait_stored(db, len(good), timeout=60, process=consumer)
    [dead] = await read_all(kafka_bootstrap, settings.dlq_topic, 1)
    headers = dict(dead.headers)
    assert headers["tracker.reason"] == b"too_large"
    assert int(headers["tracker.truncated_from_bytes"]) == len(huge)
    assert 0 < len(dead.value) < 10_000 + 64 * 1024 and huge.startswith(dead.value)
    assert consumer.alive


async def test_a_dead_letter_the_topic_refuses_stays_recorded_and_is_published_once_it_takes_it(
    settings, launch, db, kafka_bootstrap
):
    # The dead-letter topic takes 1,000-byte records only: the broker refuses the dead letter
    # (MESSAGE_TOO_LARGE, not retriable). Retrying at once would stall the partition forever;
    # the dead letter is safe in dead_letters (recorded with its batch), so the valid events
    # keep flowing, and it is published when the topic is fixed.
    dlq = f"test.small-dlq.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": "1000"})])
        settings = dataclasses.replace(settings, dlq_topic=dlq, retry_max_seconds=1)
        invalid = b"{not json " + b"z" * 5000
        good = good_messages("after-refusal", 5)
        await produce(kafka_bootstrap, settings.topic, [(b"k", invalid)] + good)
        consumer = await launch.consumer(settings)
        await wait_stored(db, len(good), timeout=60, process=consumer)
        metrics_url = f"http://{settings.consumer_host}:{settings.consumer_port}/metrics"
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            # Published after the batch commits: the refusal comes a moment after the events.
            while "tracker_consumer_dead_letters_waiting 1.0" not in await (await session.get(metrics_url)).text():
                assert time.monotonic() < deadline, "the refusal was never flagged"
                await asyncio.sleep(0.2)
        row = await db.fetchrow("SELECT reason, value, published_at FROM dead_letters")
        assert row["reason"] == "not_json" and row["value"] == invalid and row["published_at"] is None
        assert "refused a dead letter" in consumer.log() and consumer.alive

        # Once the topic takes it, the next round (every few seconds) publishes it, once.
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, dlq, configs={"max.message.bytes": "1000000"})]
        )
        [dead] = await read_all(kafka_bootstrap, dlq, 1, timeout=60)
        assert dead.value == invalid and dict(dead.headers)["tracker.reason"] == b"not_json"
        deadline = time.monotonic() + 30
        while await db.fetchval("SELECT published_at FROM dead_letters") is None:
            assert time.monotonic() < deadline, "published but not marked"
            await asyncio.sleep(0.2)
        await asyncio.sleep(6)  # another round or two: nothing more is sent
        assert len(await read_all(kafka_bootstrap, dlq, 2, timeout=3)) == 1
    finally:
        await admin.close()


async def test_a_flood_of_invalid_messages_stops_the_consumer_when_a_ratio_is_set(
    settings, launch, db, kafka_bootstrap
):
    settings = dataclasses.replace(settings, dlq_max_ratio=0.5, dlq_window_messages=200, batch_max_records=50)
    good = good_messages("before-flood", 100)
    consumer = await launch.consumer(settings)
    await produce(kafka_bootstrap, settings.topic, good)
    await wait_stored(db, len(good), timeout=60, process=consumer)
    # A producer deploys a broken format: 1,000 messages that are not JSON.
    await produce(kafka_bootstrap, settings.topic, [(b"k", b"{broken %d" % i) for i in range(1000)])
    code = await asyncio.to_thread(consumer.proc.wait, 60)
    assert code != 0
    assert "TRACKER_DLQ_MAX_RATIO" in consumer.log()
    dead = await read_all(kafka_bootstrap, settings.dlq_topic, 1000, timeout=5)
    # Stopped within about one window: far from the whole flood dead-lettered.
    assert len(dead) <= 200, len(dead)
    assert await db.fetchval("SELECT count(*) FROM events") == len(good)


async def test_partitions_handed_to_another_consumer_leave_the_first_ones_metrics(settings, launch, kafka_bootstrap):
    await produce(kafka_bootstrap, settings.topic, good_messages("spread", 60))
    await launch.consumer(settings, name="first")

    async def wait_for(port: int, check, what: str, timeout: float = 40) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            metrics = await scrape(port)
            if check(metrics):
                return metrics
            assert time.monotonic() < deadline, f"{what}: {metrics.get('tracker_consumer_lag_messages')}"
            await asyncio.sleep(0.5)

    await wait_for(
        settings.consumer_port,
        lambda m: partitions_exported(m, "tracker_consumer_lag_messages") == {"0", "1", "2"},
        "the only consumer exports the lag of all three partitions",
    )
    second_settings = dataclasses.replace(settings, consumer_port=free_port())
    await launch.consumer(second_settings, name="second")
    second = await wait_for(
        second_settings.consumer_port,
        lambda m: (
            gauge(m, "tracker_consumer_assigned_partitions") >= 1
            and partitions_exported(m, "tracker_consumer_lag_messages")
        ),
        "the second consumer took partitions and reports their lag",
    )
    taken = partitions_exported(second, "tracker_consumer_lag_messages")
    first_metrics = await wait_for(
        settings.consumer_port,
        lambda m: gauge(m, "tracker_consumer_assigned_partitions") == 3 - len(taken),
        "the first consumer gave partitions away",
    )
    for name in ("tracker_consumer_lag_messages", "tracker_consumer_highwater_offset"):
        # Each partition's lag is exported by its owner only: a sum over consumers is right.
        assert not partitions_exported(first_metrics, name) & taken, name


async def test_a_static_member_restarted_after_kill_9_gets_its_partitions_back_at_once(
    settings, launch, db, kafka_bootstrap
):
    # A session timeout far longer than the test: only static membership can hand the
    # partitions back before it ends. Without an instance id the restart waits it out.
    settings = dataclasses.replace(settings, consumer_instance_id="tracker-static-1", session_timeout_ms=60_000)
    first = await launch.consumer(settings, name="first")
    await produce(kafka_bootstrap, settings.topic, good_messages("static-a", 10))
    await wait_stored(db, 10, timeout=60, process=first)
    first.kill()
    restarted = await launch.consumer(settings, name="restarted")
    await produce(kafka_bootstrap, settings.topic, good_messages("static-b", 10))
    await wait_stored(db, 20, timeout=30, process=restarted)


def test_elapsed_histograms_count_a_batch_per_service_and_outcome_as_prometheus_would():
    """record_batch counts a batch's elapsed times at once (consumer/metrics.py); the exposition
    is what a prometheus_client Histogram observing them one by one would export."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from consumer.metrics import _ELAPSED_BUCKETS, ConsumerMetrics
    from consumer.store import BatchResult

    elapsed = [
        ("service", "ingress", False, 0.02),
        ("service", "ingress", False, 0.02),
        ("service", "ingress", True, 7.0),
        ("service", "copy", False, 86400.0),
        ("service", "copy", False, 1e6),
        ("trace", "", False, 3.0),
        ("trace", "", True, 0.004),
        ("trace", "", False, 60.0),
    ]
    metrics = ConsumerMetrics(max_services=1)  # "copy" is over the bound: counted as "other"
    metrics.record_batch(BatchResult(7, 0, [], elapsed[:4]))
    metrics.record_batch(BatchResult(3, 0, [], elapsed[4:]))

    reference = CollectorRegistry()
    service = Histogram(
        "tracker_service_elapsed_seconds", "", ["service", "outcome"], buckets=_ELAPSED_BUCKETS, registry=reference
    )
    trace = Histogram("tracker_trace_elapsed_seconds", "", ["outcome"], buckets=_ELAPSED_BUCKETS, registry=reference)
    for kind, name, failed, seconds in elapsed:
        outcome = "error" if failed else "success"
        if kind == "service":
            service.labels("ingress" if name == "ingress" else "other", outcome).observe(seconds)
        else:
            trace.labels(outcome).observe(seconds)

    def samples(registry, name: str) -> set:
        families = text_string_to_metric_families(generate_latest(registry).decode())
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in families
            if f.name == name
            for s in f.samples
            if not s.name.endswith("_created")
        }

    for name in ("tracker_service_elapsed_seconds", "tracker_trace_elapsed_seconds"):
        assert samples(metrics.registry, name) == samples(reference, name) != set()
    finished = {
        s.labels["outcome"]: s.value
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        if f.name == "tracker_traces_finished"
        for s in f.samples
        if s.name == "tracker_traces_finished_total"
    }
    assert finished == {"success": 2, "error": 1}


async def test_a_consumer_asked_to_stop_while_starting_stops_at_once(settings, launch, db):
    """Starting can wait long (here: for the partitions, which another process is creating);
    SIGTERM meanwhile ends the process cleanly instead of after the wait."""
    from tracker.maintenance import _LOCK_KEY

    await db.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)  # maintenance "in progress" elsewhere
    try:
        consumer = await launch.consumer(settings)
        deadline = time.monotonic() + 20
        while "consuming" not in consumer.log() and time.monotonic() < deadline:
            if await db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
                break  # the consumer is waiting for the lock: in the middle of its start
            await asyncio.sleep(0.1)
        assert "consuming" not in consumer.log()
        code = await asyncio.to_thread(consumer.terminate, 10)
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    assert code == 0, consumer.log()
    assert "stopped while starting" in consumer.log()


async def test_a_consumer_of_a_topic_that_does_not_exist_says_which_and_exits(settings, launch):
    settings = dataclasses.replace(settings, topic=f"no-such-topic-{uuid.uuid4().hex[:8]}")
    consumer = await launch.consumer(settings, wait=False)
    # Without the check, the Kafka client waits out its metadata timeout (~40 s) and ends
    # with a stack trace.
    code = await asyncio.to_thread(consumer.proc.wait, 20)
    assert code == 1
    assert f"{settings.topic} do not exist" in consumer.log() and "tracker topics" in consumer.log(), consumer.log()


async def sink_parts(settings, kafka_bootstrap: str, before_commit):
    """A writers' pool, a started consumer whose offset commits first await
    ``before_commit(offsets)``, and a started producer: what a Sink is built from."""
    pool = await create_pool(settings, init=_init_connection, min_size=1, max_size=4)
    consumer = AIOKafkaConsumer(
        settings.topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    await producer.start()
    commit = consumer.commit

    async def watched_commit(offsets):
        await before_commit(offsets)
        await commit(offsets)

    consumer.commit = watched_commit
    return pool, consumer, producer


async def test_a_stop_waits_for_the_offset_commit_still_in_flight(settings, db, kafka_bootstrap):
    """A writer's offset commit runs while it writes its next batch (consumer/sink.py); a stop
    must still end with every stored batch committed. The broker is made slow to commit (each
    commit waits a second before it is sent), so the stop comes while the last one is on its way."""
    now = datetime.now(UTC)
    messages = [(f"c-{i % 3}".encode(), encode(payload_tracker(f"c-{i % 3}", "svc", f"s{i}", now))) for i in range(30)]
    await produce(kafka_bootstrap, settings.topic, messages)
    started = []

    async def slowly(offsets):
        started.append(time.monotonic())
        await asyncio.sleep(1)

    pool, consumer, producer = await sink_parts(settings, kafka_bootstrap, slowly)
    stop = asyncio.Event()
    sink = Sink(settings, consumer, producer, pool, ConsumerMetrics(), stop, dead_letter_limit=1 << 20)
    running = asyncio.create_task(sink.run())
    try:
        await wait_stored(db, 30, timeout=60)
        deadline = time.monotonic() + 30
        while not started:
            assert time.monotonic() < deadline, "no commit started"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(running, 30)
        # Committed before run() returned: nothing left on its way.
        await wait_all_committed(kafka_bootstrap, settings.topic, settings.consumer_group, timeout=0.5)
    finally:
        stop.set()
        running.cancel()
        await consumer.stop()
        await producer.stop()
        await pool.close()


async def test_offsets_are_committed_once_per_interval_and_what_a_quiet_spell_leaves_is_committed_too(
    settings, db, kafka_bootstrap
):
    """Offsets go to Kafka at most once per TRACKER_COMMIT_INTERVAL_MS per writer, however many
    batches are stored meanwhile; the offsets of the last batches before the topic goes quiet
    are committed once due, without a stop or another message."""
    settings = dataclasses.replace(settings, commit_interval_ms=1000, consumer_writers=1)
    started: list[float] = []

    async def counted(offsets):
        started.append(time.monotonic())

    pool, consumer, producer = await sink_parts(settings, kafka_bootstrap, counted)
    stop = asyncio.Event()
    metrics = ConsumerMetrics()
    sink = Sink(settings, consumer, producer, pool, metrics, stop, dead_letter_limit=1 << 20)
    running = asyncio.create_task(sink.run())
    try:
        now = datetime.now(UTC)
        # Ten waves 0.2 s apart: each is a batch of its own (the writer is idle when it comes).
        for wave in range(10):
            messages = [(b"q", encode(payload_tracker("q", "svc", f"s{wave}-{i}", now))) for i in range(3)]
            await produce(kafka_bootstrap, settings.topic, messages)
            await asyncio.sleep(0.2)
        await wait_stored(db, 30, timeout=30)
        batches = metrics.registry.get_sample_value("tracker_consumer_batches_total") or 0
        # No stop, no new message: the flusher commits the rest once due.
        await wait_all_committed(kafka_bootstrap, settings.topic, settings.consumer_group, timeout=5)
        assert batches >= 5, f"the waves came as {batches} batch(es): the test proves nothing"
        assert len(started) < batches, (started, batches)
        gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
        assert all(gap >= 0.95 for gap in gaps), gaps
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await consumer.stop()
        await producer.stop()
        await pool.close()


async def test_a_late_event_that_meets_its_partition_being_created_is_stored_there_on_retry(
    settings, launch, db, kafka_bootstrap
):
    """An event older than the pre-created partitions goes to events_default; if another
    consumer's maintenance creates its day's partition meanwhile (tracker/maintenance.py locks
    events_default, moves that day's rows, attaches the partition), PostgreSQL refuses the
    write that was waiting on the lock ("violates partition constraint"). The consumer retries
    the batch, which then lands in the new partition; before, it exited with that error.

    The race is made certain: the test holds the maintenance's lock until the consumer waits on
    it, then creates the partition in the same transaction."""
    day = datetime.now(UTC).date() - timedelta(days=PRECREATE_DAYS + 100)  # kept, not pre-created
    assert partition_name(day) not in await existing_partitions(db)
    consumer = await launch.consumer(dataclasses.replace(settings, log_level="INFO"))
    blocker = await asyncpg.connect(settings.database_url)
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE events_default IN SHARE ROW EXCLUSIVE MODE")
        at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        await produce(
            kafka_bootstrap, settings.topic, [(b"late", encode(payload_tracker("late", "svc", "received", at)))]
        )
        deadline = time.monotonic() + 30
        # The write's COPY, not the consumer's own maintenance round (its retention DELETE on
        # events_default waits on the same lock; counting that one made this test flaky).
        while not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE 'COPY%events%'"
        ):
            assert consumer.alive and time.monotonic() < deadline, "the consumer never waited on the lock"
            await asyncio.sleep(0.05)
        await create_partition(blocker, day)
        await held.commit()
    finally:
        await blocker.close()
    await wait_stored(db, 1, process=consumer)
    assert await db.fetchval("SELECT tableoid::regclass::text FROM events") == partition_name(day)
    assert "PartitionAttached" in consumer.log(), "the write did not meet the partition being created"
    assert consumer.alive
