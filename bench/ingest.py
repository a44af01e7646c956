"""How fast does the consumer ingest, against what baselines, with how much memory and latency?

1. Produce N events (default 1,000,000: ~10 per trace, 20 services, ~600-byte
   messages, half Payload Tracker and half Status API) into a fresh topic.
2. Start the real consumer process (`python -m consumer`) on a fresh database
   and time it from process start until every event is committed (its
   tracker_consumer_messages_total reaches N). Peak RSS from /proc (VmHWM).
3. Baselines on the same rows and table, fresh database each:
   - ceiling: one COPY of all N rows (parsing done beforehand, not timed);
   - the ancestors' way: parse + one INSERT per message, committed each, on the
     first --per-message events (it is too slow to run on all of them).
4. Latency: a consumer on a fresh topic and database (so that the bulk load's
   checkpoints and autovacuum are not what is measured), a 5 s warm-up, then
   --rate events/s for --latency-seconds, polling PostgreSQL every few ms for
   each event id: produce-to-queryable p50/p99.

Usage: python -m bench.ingest [--events N] [--per-message K] [--rate 2000] [--latency-seconds 20]
Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else starts local ones.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from bench.common import dataset, fresh_database, rss_peak_bytes, services
from consumer.store import COLUMNS, event_record
from tracker.db import init_connection
from tracker.devservices.ports import free_port
from tracker.events import Event, parse_message
from tracker.settings import ENVIRONMENT, Settings
from tracker.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
INSERT_ONE = (f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))})"
              " ON CONFLICT (event_id, ts) DO NOTHING")


async def produce(bootstrap: str, topic: str, messages) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20,
                                max_batch_size=512 * 1024, compression_type=None)
    await producer.start()
    started = time.perf_counter()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def consumer_count(session: aiohttp.ClientSession, metrics_url: str) -> int:
    try:
        async with session.get(metrics_url) as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError):
        return 0
    for family in text_string_to_metric_families(text):
        if family.name == "tracker_consumer_messages":
            return int(sum(s.value for s in family.samples if s.name.endswith("_total")))
    return 0


def start_consumer(settings: Settings, log_path: Path) -> subprocess.Popen:
    ours = {var for var, _ in ENVIRONMENT.values()}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(settings.as_environ())
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "consumer"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)


async def time_consumer(settings: Settings, n: int, log_path: Path) -> tuple[float, subprocess.Popen]:
    metrics_url = f"http://{settings.consumer_host}:{settings.consumer_port}/metrics"
    started = time.perf_counter()
    proc = start_consumer(settings, log_path)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while await consumer_count(session, metrics_url) < n:
            if proc.poll() is not None:
                raise SystemExit(f"the consumer exited with {proc.returncode}; see {log_path}")
            await asyncio.sleep(0.1)
    return time.perf_counter() - started, proc


async def ceiling_copy(admin_url: str, events: list[Event]) -> float:
    url = await fresh_database(admin_url, prefix="bench_copy")
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    records = [event_record(e) for e in events]
    started = time.perf_counter()
    await conn.copy_records_to_table("events", records=records, columns=COLUMNS)
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed


async def per_message(admin_url: str, values: list[bytes]) -> float:
    """The ancestors' way: each message parsed and inserted on its own, committed each."""
    url = await fresh_database(admin_url, prefix="bench_one")
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    started = time.perf_counter()
    for value in values:
        event = parse_message(value, max_bytes=1 << 20)
        await conn.execute(INSERT_ONE, *event_record(event))
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed


async def latency(bootstrap: str, topic: str, database_url: str, rate: int, seconds: float) -> list[float]:
    """Produce at ``rate``/s; poll the events table for each id until it is there."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    await producer.start()
    conn = await asyncpg.connect(database_url)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    # The probe's events are dated now: bounding ts lets PostgreSQL read today's partition only,
    # so the poller stays cheap and measures the consumer, not itself.
    phase_start = datetime.now(timezone.utc) - timedelta(minutes=1)
    done = asyncio.Event()

    async def poll():
        while not done.is_set() or len(seen) < len(sent):
            pending = [k for k in sent if k not in seen]
            if pending:
                rows = await conn.fetch("SELECT event_id FROM events WHERE ts >= $2 AND event_id = ANY($1::text[])",
                                        pending, phase_start)
                now = time.perf_counter()
                for row in rows:
                    seen[row["event_id"]] = now
            await asyncio.sleep(0.002)

    poller = asyncio.create_task(poll())
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        due = int((time.perf_counter() - started) * rate)
        while i < due:
            event_id = str(uuid.uuid4())
            trace_id = f"latency-{i // 10}"
            doc = {"trace_id": trace_id, "event_id": event_id, "service": f"service-{i % 20:02d}",
                   "status": "received", "timestamp": datetime.now(timezone.utc).isoformat()}
            sent[event_id] = time.perf_counter()
            await producer.send(topic, orjson.dumps(doc), key=trace_id.encode())
            i += 1
        await asyncio.sleep(0.001)
    await producer.flush()
    done.set()
    await asyncio.wait_for(poller, 120)
    await producer.stop()
    await conn.close()
    return [seen[k] - sent[k] for k in sent]


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]


async def main_async(args, bootstrap: str, admin_url: str) -> None:
    print(f"data set: {args.events:,} events", flush=True)
    messages = dataset(args.events)
    values = [v for _, v in messages]
    mean_size = sum(len(v) for v in values) / len(values)
    events = [parse_message(v, max_bytes=1 << 20) for v in values]
    assert all(isinstance(e, Event) for e in events)
    print(f"  {len({e.trace_id for e in events}):,} traces, mean message {mean_size:.0f} bytes", flush=True)

    run = uuid.uuid4().hex[:8]
    topic = f"bench.events.{run}"
    await ensure_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=args.partitions)
    produce_s = await produce(bootstrap, topic, messages)
    print(f"produced in {produce_s:.1f} s ({args.events / produce_s:,.0f} events/s)", flush=True)

    database_url = await fresh_database(admin_url, prefix="bench_ingest")
    settings = Settings.from_env({}, kafka_bootstrap_servers=bootstrap, database_url=database_url, topic=topic,
                                 dlq_topic=f"{topic}.dlq", consumer_group=f"bench-{run}",
                                 consumer_port=free_port(), log_level="WARNING",
                                 batch_max_records=args.batch)
    log_path = Path(f"/tmp/bench-ingest-consumer-{run}.log")
    consumer_s, proc = await time_consumer(settings, args.events, log_path)
    consumer_rate = args.events / consumer_s
    print(f"consumer: {consumer_rate:,.0f} events/s ({consumer_s:.1f} s from process start)", flush=True)
    rss = rss_peak_bytes(proc.pid)

    proc.terminate()
    proc.wait(30)

    # Steady state, measured apart from the bulk load (whose checkpoints and autovacuum
    # would otherwise be what is measured): a fresh topic, database and consumer.
    steady_topic = f"bench.latency.{run}"
    await ensure_topics(bootstrap, [steady_topic, f"{steady_topic}.dlq"], partitions=args.partitions)
    steady = dataclasses.replace(settings, topic=steady_topic, dlq_topic=f"{steady_topic}.dlq",
                                 consumer_group=f"bench-latency-{run}",
                                 database_url=await fresh_database(admin_url, prefix="bench_latency"))
    proc = start_consumer(steady, log_path)
    await latency(bootstrap, steady_topic, steady.database_url, args.rate, 5)  # warm-up, not counted
    latencies = await latency(bootstrap, steady_topic, steady.database_url, args.rate, args.latency_seconds)
    rss = max(rss, rss_peak_bytes(proc.pid))
    proc.terminate()
    proc.wait(30)

    copy_s = await ceiling_copy(admin_url, events)
    copy_rate = args.events / copy_s
    print(f"ceiling (one COPY): {copy_rate:,.0f} events/s", flush=True)
    sample = values[: args.per_message]
    one_s = await per_message(admin_url, sample)
    one_rate = len(sample) / one_s
    print(f"one INSERT per message ({len(sample):,} events): {one_rate:,.0f} events/s", flush=True)

    print()
    print(f"ingest of {args.events:,} events, {args.partitions} partitions, batches of {args.batch}")
    print(f"  consumer (validate + dead-letter + events + trace state, commit): {consumer_rate:>10,.0f} events/s")
    print(f"  ceiling: one COPY of the same rows, events table only:           {copy_rate:>10,.0f} events/s"
          f"   consumer = {consumer_rate / copy_rate:.0%} of it")
    print(f"  ancestors: one INSERT per message:                                {one_rate:>10,.0f} events/s"
          f"   consumer = x{consumer_rate / one_rate:.1f}")
    print(f"  consumer peak RSS: {rss / 2**20:.0f} MiB")
    print(f"  produce-to-queryable at {args.rate:,} events/s for {args.latency_seconds:.0f} s "
          f"({len(latencies):,} events): p50 {percentile(latencies, 50) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-message", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    args = parser.parse_args()
    # The local services are started outside the event loop (their readiness checks run their own).
    with services() as (bootstrap, admin_url):
        asyncio.run(main_async(args, bootstrap, admin_url))


if __name__ == "__main__":
    main()
