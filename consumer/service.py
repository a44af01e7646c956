"""Wire the consumer process together: pool, Kafka clients, metrics server, the sink loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumer.health import health_app
from consumer.metrics import ConsumerMetrics
from consumer.sink import Sink
from consumer.store import prepare_connection
from tracker.db import TRANSIENT_ERRORS, create_pool, init_connection, keep_session
from tracker.kafka import client_options
from tracker.kafka import explain as kafka_failure
from tracker.maintenance import maintenance_round
from tracker.settings import Settings
from tracker.topics import record_limit

log = logging.getLogger("tracker.consumer")


async def _init_connection(conn) -> None:
    await init_connection(conn)
    await prepare_connection(conn)


async def maintain(settings: Settings, stop: asyncio.Event) -> None:
    """Partitions ahead and retention, every maintenance interval, until stopped."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.maintenance_interval_seconds)
            return
        except TimeoutError:
            pass
        try:
            await maintenance_round(settings)
        except TRANSIENT_ERRORS as exc:
            # The next round will do it; ingestion has its own retries meanwhile.
            log.warning("maintenance skipped, database unavailable: %s", exc)


def tune_garbage_collector() -> None:
    """A batch holds thousands of freshly parsed documents at once; with the default threshold
    (a collection every 700 new containers) the cyclic collector ran again and again over them
    and doubled the cost of parsing JSON (bench/ingest's profile). Events are trees, freed by
    reference counting; the collector only has cycles from the libraries to find, so it runs
    every 50,000 allocations instead, and what was loaded at startup is left out of its scans."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class MissingTopics(Exception):
    """A topic the consumer reads or writes does not exist (the broker does not create topics
    on demand, as production brokers are set up): say which and how to create them, rather than
    wait out the client's metadata timeout and fail with a stack trace."""


def serve(settings: Settings) -> int:
    """Run one consumer until it is asked to stop; the process's exit code."""
    try:
        asyncio.run(run(settings))
    except MissingTopics as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:
        # Neither bad data nor a passing outage: let the supervisor restart us; Kafka redelivers.
        reason = kafka_failure(settings, exc)
        if reason is not None:
            log.error("consumer failed: %s", reason)  # refused credentials, a wrong protocol: a sentence
        else:
            log.exception("consumer failed")
        return 1
    return 0


async def _prepare_partitions(settings: Settings) -> None:
    await maintenance_round(settings, wait=True)


async def _start_kafka(settings: Settings, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
    await producer.start()
    # One metadata request: the consumer's own start would wait ~40 s for a missing topic, then
    # fail with UnknownTopicOrPartitionError and a stack trace.
    metadata = await producer.client.fetch_all_metadata()
    missing = sorted({settings.topic, settings.dlq_topic} - metadata.topics())
    if missing:
        raise MissingTopics(
            f"the Kafka topic(s) {', '.join(missing)} do not exist on {settings.kafka_bootstrap_servers}; "
            f"create them with `tracker topics` (TRACKER_TOPIC_PARTITIONS partitions), or set TRACKER_TOPIC / "
            f"TRACKER_DLQ_TOPIC to the topics your producers use"
        )
    await consumer.start()


async def _unless_stopped(stop: asyncio.Event, work) -> bool:
    """Run ``work``; if ``stop`` is set first, cancel it and return False. Starting can wait
    long (a broker or database not up yet, a coordinator moving): SIGTERM still ends it."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # its exception, if it failed
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def _all(*steps) -> None:
    """Run the steps concurrently; if one fails, cancel the others (they hold connections
    that the caller is about to close) and raise its error as it is."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def run(settings: Settings) -> None:
    tune_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics = ConsumerMetrics(max_services=settings.metrics_max_services, max_statuses=settings.metrics_max_statuses)
    # One connection per writer; at least one more serves /readyz and the dead letters without
    # waiting. Batches leave nothing in the session: no reset query on the server per batch.
    pool = await create_pool(
        settings,
        init=_init_connection,
        reset=keep_session,
        min_size=1,
        max_size=max(settings.consumer_db_pool_max, settings.consumer_writers + 1),
    )
    security = client_options(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        **security,
        group_id=settings.consumer_group,
        # Static membership: a restarted member with the same id gets its partitions back
        # at once instead of after the session timeout (README: "Restarts").
        group_instance_id=settings.consumer_instance_id or None,
        # Offsets are committed by the sink only after the database commit.
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # How soon a crashed member's partitions move to the others.
        session_timeout_ms=settings.session_timeout_ms,
        # How soon the members learn that one joined (a scale-out, a restart, the processes of
        # TRACKER_CONSUMER_PROCESSES starting together): only a heartbeat tells them. At a third
        # of the session (3.3 s) a group that started 80 ms apart ran on one member for 3.4 s
        # at start (bench/ingest's consumer phase, a tenth of it); a heartbeat a second is a
        # small request to the coordinator.
        heartbeat_interval_ms=min(1000, settings.session_timeout_ms // 3),
        # Room for the largest message we accept and little more: one fetch response per
        # partition is held in memory whole, and at twice the message bound these buffers were
        # a fifth of the consumer's heap (a tracemalloc snapshot at its peak, bench/ingest data).
        max_partition_fetch_bytes=max(settings.max_message_bytes + 64 * 1024, 512 * 1024),
        fetch_max_bytes=max(settings.max_message_bytes * 4, 50 * 1024 * 1024),
        # Let the broker gather a fetch for a few ms instead of answering each one with the
        # message or two that came since the last (fetch.min.bytes 1): at a steady 2,000
        # events/s the fetch loop that spins that way was a fifth of the consumer's samples,
        # and gathering cut its CPU by about a quarter. Under a backlog the bytes are there at
        # once and nothing waits (docs/decisions/012).
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        fetch_min_bytes=settings.fetch_min_bytes,
    )
    dead_letter_limit = record_limit(settings.max_message_bytes)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        **security,
        acks="all",
        enable_idempotence=True,
        max_request_size=dead_letter_limit,
    )
    sink = Sink(settings, consumer, producer, pool, metrics, stop, dead_letter_limit=dead_letter_limit)
    runner = web.AppRunner(health_app(metrics, pool, sink), access_log=None)
    tasks: list[asyncio.Task] = []
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.consumer_host, settings.consumer_port).start()
        log.info("consumer metrics and health on http://%s:%s", settings.consumer_host, settings.consumer_port)
        consumer.subscribe([settings.topic], listener=sink.listener())
        # Partitions exist before the first event is written (sink.run, below): if another
        # consumer is creating them (members of a group start together), wait for it. Joining
        # the group and starting the producer meanwhile saves their round trips at start.
        if not await _unless_stopped(
            stop, _all(_prepare_partitions(settings), _start_kafka(settings, producer, consumer))
        ):
            log.info("stopped while starting")
            return
        tasks.append(asyncio.create_task(maintain(settings, stop)))
        log.info("consuming %s as group %s", settings.topic, settings.consumer_group)
        tasks.append(asyncio.create_task(sink.report_lag()))
        await sink.run()
    finally:
        for task in tasks:
            task.cancel()
        # stop() leaves the group, so the partitions move to the others at once.
        await consumer.stop()
        await producer.stop()
        await runner.cleanup()
        await pool.close()
        log.info("consumer stopped")
