"""How fast does the consumer ingest, against what baselines, with how much memory and latency?

1. Produce N events (default 1,000,000: ~10 per trace, 20 services, ~600-byte
   messages, half Payload Tracker and half Status API) into a fresh topic.
2. Start the real consumer (`python -m consumer`, with TRACKER_CONSUMER_PROCESSES=
   --processes, default one per core) on a fresh database and time it from process
   start until every event is committed (its tracker_consumer_messages_total reaches
   N). Peak RSS from /proc (VmHWM), summed over its processes. The broker's offsets topic
   is created before (one commit of a throwaway group), as on any broker that has
   served a consumer group, and what producing left in the page cache is written out
   (sync) before the clock starts.
3. Baselines on the same rows and table, fresh database each:
   - ceiling: one COPY of all N rows (parsing done beforehand, not timed);
   - the ancestors' way: parse + one INSERT per message, committed each, on the
     first --per-message events (it is too slow to run on all of them).
4. Latency, on a settled machine: the bulk load's database dropped (and with it the
   autovacuum it set off) and a CHECKPOINT; then a consumer on a fresh topic and
   database, a 5 s warm-up, then
   --rate events/s (and --high-rate) for --latency-seconds, polling PostgreSQL
   every few ms for each event id: produce-to-queryable p50/p99.
5. Where the CPU goes during the consumer phase: CPU seconds per 1,000 events of
   the consumer (all its processes), of PostgreSQL (all its processes) and of the
   broker, from /proc.
6. Scale-out: the first --scale-events events with TRACKER_CONSUMER_PROCESSES 1, 2
   and 3 on the same partitions, fresh database and group each, timed until all are stored.

Usage: python -m bench.ingest [--events N] [--per-message K] [--rate 2000] [--high-rate 8000]
                              [--latency-seconds 20] [--scale-events 300000] [--processes P]
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.common import dataset, fresh_database, rss_peak_bytes, services, valid_events
from tracker.db import init_connection
from tracker.devservices.ports import free_port
from tracker.devservices.postgres import drop_database
from tracker.events import EVENT_COLUMNS, Event, copy_rows
from tracker.settings import Settings
from tracker.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
INSERT_ONE = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(EVENT_COLUMNS)))})"
    " ON CONFLICT (event_id, ts) DO NOTHING"
)


async def produce(bootstrap: str, topic: str, messages) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
        compression_type=None,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def create_offsets_topic(bootstrap: str, topic: str, group: str) -> None:
    """Commit one offset for a throwaway group, so that the broker creates its offsets topic
    (__consumer_offsets) now: a broker started for this run has none yet, and creating it
    (the consumer's log showed GroupCoordinatorNotAvailableError for the first seconds) was
    counted in the consumer's time, a cost that no broker that has served a group pays again."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.commit({partition: 0})
    finally:
        await consumer.stop()


async def consumer_progress(session: aiohttp.ClientSession, metrics_url: str) -> tuple[int, float]:
    """(messages handled, unix time of the last batch's database commit) from the consumer's
    /metrics (of all its processes, when TRACKER_CONSUMER_PROCESSES runs several). Not the
    offset commit's: offsets go to Kafka up to TRACKER_COMMIT_INTERVAL_MS later."""
    try:
        async with session.get(metrics_url) as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError):
        return 0, 0.0
    count, last_stored = 0, 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "tracker_consumer_messages":
            count = int(sum(s.value for s in family.samples if s.name.endswith("_total")))
        elif family.name == "tracker_consumer_last_stored_timestamp_seconds":
            last_stored = max(s.value for s in family.samples)
    return count, last_stored


def start_consumer(settings: Settings, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer"],
            env=settings.child_environ(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def time_consumer(settings: Settings, n: int, log_path: Path) -> tuple[float, subprocess.Popen, int]:
    """Seconds from the consumer's start to the database commit of its last batch: the end is
    the consumer's own time of it, so polling /metrics gently (each scrape costs the consumer
    CPU) costs no precision."""
    metrics_url = f"http://{settings.consumer_host}:{settings.consumer_port}/metrics"
    started = time.time()
    proc = start_consumer(settings, log_path)
    memory = MemorySampler(proc.pid)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            count, last_stored = await consumer_progress(session, metrics_url)
            if count >= n:
                return last_stored - started, proc, memory.stop()
            if proc.poll() is not None:
                raise SystemExit(f"the consumer exited with {proc.returncode}; see {log_path}")
            await asyncio.sleep(1)


async def ceiling_copy(admin_url: str, events: list[Event]) -> tuple[float, str]:
    """Seconds for one COPY of every event, and the database it loaded."""
    url = await fresh_database(admin_url, prefix="bench_copy")
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    columns, rows = copy_rows(events)
    records = list(rows)  # as the consumer sends them, converted before the clock
    started = time.perf_counter()
    await conn.copy_records_to_table("events", records=records, columns=columns)
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed, url


async def per_message(admin_url: str, values: list[bytes]) -> float:
    """The ancestors' way: each message parsed and inserted on its own, committed each."""
    url = await fresh_database(admin_url, prefix="bench_one")
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    started = time.perf_counter()
    for event in valid_events(values):
        await conn.execute(INSERT_ONE, *event)
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed


async def latency(bootstrap: str, topic: str, database_url: str, rate: int, seconds: float) -> list[float]:
    """Produce at ``rate``/s; poll the events table for each id until it is there."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    await producer.start()
    conn = await asyncpg.connect(database_url)
    pending: dict[str, float] = {}
    latencies: list[float] = []
    # The probe's events are dated now: bounding ts lets PostgreSQL read today's partition only,
    # and the poller asks only for the ids still missing (not a scan of everything sent, which
    # cost a quarter of a core at 2,000 events/s by the end of a run): it measures the
    # consumer, not itself.
    phase_start = datetime.now(UTC) - timedelta(minutes=1)
    done = asyncio.Event()

    async def poll():
        while not done.is_set() or pending:
            if pending:
                rows = await conn.fetch(
                    "SELECT event_id FROM events WHERE ts >= $2 AND event_id = ANY($1::text[])",
                    list(pending),
                    phase_start,
                )
                now = time.perf_counter()
                for row in rows:
                    latencies.append(now - pending.pop(row["event_id"]))
            await asyncio.sleep(0.002)

    poller = asyncio.create_task(poll())
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        due = int((time.perf_counter() - started) * rate)
        while i < due:
            event_id = str(uuid.uuid4())
            trace_id = f"latency-{i // 10}"
            doc = {
                "trace_id": trace_id,
                "event_id": event_id,
                "service": f"service-{i % 20:02d}",
                "status": "received",
                "timestamp": datetime.now(UTC).isoformat(),
            }
            pending[event_id] = time.perf_counter()
            await producer.send(topic, orjson.dumps(doc), key=trace_id.encode())
            i += 1
        await asyncio.sleep(0.001)
    await producer.flush()
    done.set()
    await asyncio.wait_for(poller, 120)
    await producer.stop()
    await conn.close()
    assert len(latencies) == i
    return latencies


def _cpu_ticks(pid: int, children: bool = False) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime + cstime: backends that have exited
    return ticks


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live children: a consumer with TRACKER_CONSUMER_PROCESSES > 1 is a
    parent and its members."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def tree_cpu_seconds(pids: list[int]) -> float:
    return sum(_cpu_ticks(p) for p in pids) / os.sysconf("SC_CLK_TCK")


def tree_rss_peak_bytes(pids: list[int]) -> int:
    """The sum of each process's peak RSS: an upper bound on the group's peak (their peaks
    need not coincide, and pages shared since the fork count once per process)."""
    return sum(rss_peak_bytes(p) for p in pids)


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemorySampler:
    """The peak, sampled every half second, of the summed PSS of a process and its children.

    PSS (proportional set size) counts a page shared by k processes as 1/k in each, so the
    sum is the memory the group takes from the machine; summed RSS would count the pages
    that the forked members share with each other (the interpreter, the imported modules)
    once per process. For one process the two differ only by the shared libraries."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, sum(_pss_bytes(p) for p in process_tree(self.pid)))
            await asyncio.sleep(0.5)

    def stop(self) -> int:
        self._task.cancel()
        return self.peak


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of every PostgreSQL process and of the Kafka broker on this machine
    (the benchmark's own: it runs alone). The postmaster's reaped children count too."""
    out = {"postgres": 0, "broker": 0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"postgres") or b"/bin/postgres" in cmdline.split(b"\0")[0]:
            parent = b"/bin/postgres" in cmdline.split(b"\0")[0]  # the postmaster; backends rename themselves
            out["postgres"] += _cpu_ticks(int(entry.name), children=parent)
        elif b"kafka.Kafka" in cmdline:
            out["broker"] += _cpu_ticks(int(entry.name))
    hz = os.sysconf("SC_CLK_TCK")
    return {k: v / hz for k, v in out.items()}


async def events_stored(conn) -> int:
    return await conn.fetchval("SELECT count(*) FROM events")


async def scale_out(
    bootstrap: str, admin_url: str, topic: str, settings: Settings, n: int, processes: int, run: str
) -> float:
    """Events/s of one consumer command with ``processes`` processes (TRACKER_CONSUMER_PROCESSES)
    on the topic's first ``n`` events (a fresh group and database, dropped after)."""
    database_url = await fresh_database(admin_url, prefix=f"bench_scale{processes}")
    conn = await asyncpg.connect(database_url)
    member = dataclasses.replace(
        settings,
        database_url=database_url,
        consumer_port=free_port(),
        consumer_group=f"bench-scale{processes}-{run}",
        consumer_processes=processes,
    )
    proc = start_consumer(member, Path(f"/tmp/bench-ingest-scale{processes}-{run}.log"))
    try:
        started = time.perf_counter()
        while await events_stored(conn) < n:
            if proc.poll() is not None:
                raise SystemExit("the consumer exited during the scale-out phase")
            await asyncio.sleep(0.25)
        return n / (time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait(90)
        await conn.close()
        await settle(admin_url, database_url)  # the next run and the ceiling do not pay for this one


async def steady_latency(
    bootstrap: str, admin_url: str, settings: Settings, args, run: str, name: str, rate: int
) -> tuple[list[float], int, int]:
    """Produce-to-queryable at ``rate``, measured apart from the bulk load (whose checkpoints and
    autovacuum would otherwise be what is measured): a fresh topic, database and consumer, a 5 s
    warm-up not counted. Returns the latencies, the consumer's peak PSS and its peak RSS (summed)."""
    topic = f"bench.latency{name}.{run}"
    await ensure_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=args.partitions)
    database_url = await fresh_database(admin_url, prefix=f"bench_latency{name.replace('-', '_')}")
    steady = dataclasses.replace(
        settings,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        consumer_group=f"bench-latency{name}-{run}",
        database_url=database_url,
    )
    proc = start_consumer(steady, Path(f"/tmp/bench-ingest-latency{name}-{run}.log"))
    memory = MemorySampler(proc.pid)
    try:
        await latency(bootstrap, topic, database_url, rate, 5)
        latencies = await latency(bootstrap, topic, database_url, rate, args.latency_seconds)
        return latencies, memory.stop(), tree_rss_peak_bytes(process_tree(proc.pid))
    finally:
        proc.terminate()
        proc.wait(90)


async def settle(admin_url: str, database_url: str) -> None:
    """Let the machine settle after a bulk load before the next phase is measured: the loaded
    database is dropped (which also stops the autovacuum workers it set off: a run measured
    p99 299 ms at 2,000 events/s right after the load and 154 ms without it), a CHECKPOINT
    writes out what the load left dirty and sync the rest of the page cache, so that neither
    lands in the middle of the next phase."""
    await drop_database(admin_url, database_url.rsplit("/", 1)[1])
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    await asyncio.to_thread(os.sync)


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]


async def main_async(args, bootstrap: str, admin_url: str) -> None:
    print(f"data set: {args.events:,} events", flush=True)
    messages = dataset(args.events)
    values = [v for _, v in messages]
    mean_size = sum(len(v) for v in values) / len(values)
    events = valid_events(values)
    print(f"  {len({e.trace_id for e in events}):,} traces, mean message {mean_size:.0f} bytes", flush=True)

    run = uuid.uuid4().hex[:8]
    topic = f"bench.events.{run}"
    await ensure_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=args.partitions)
    produce_s = await produce(bootstrap, topic, messages)
    print(f"produced in {produce_s:.1f} s ({args.events / produce_s:,.0f} events/s)", flush=True)
    await create_offsets_topic(bootstrap, topic, f"bench-warmup-{run}")
    # Settled before timing: the broker has just written the topic (~600 MB here) to the page
    # cache, and the kernel writes it back ~30 s later — in the middle of the consumer phase,
    # where it queued in front of PostgreSQL's commit fsyncs. The baselines, measured later,
    # never met it. In service, a consumer does not read a topic produced all at once.
    await asyncio.to_thread(os.sync)

    database_url = await fresh_database(admin_url, prefix="bench_ingest")
    settings = Settings.from_env(
        {},
        kafka_bootstrap_servers=bootstrap,
        database_url=database_url,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        consumer_group=f"bench-{run}",
        consumer_port=free_port(),
        log_level="WARNING",
        consumer_processes=args.processes,
        **({"batch_max_records": args.batch} if args.batch else {}),
    )
    log_path = Path(f"/tmp/bench-ingest-consumer-{run}.log")
    cpu_before = cpu_seconds()
    consumer_s, proc, pss = await time_consumer(settings, args.events, log_path)
    cpu_after = cpu_seconds()
    tree = process_tree(proc.pid)
    consumer_cpu = tree_cpu_seconds(tree)
    consumer_rate = args.events / consumer_s
    print(f"consumer: {consumer_rate:,.0f} events/s ({consumer_s:.1f} s from process start)", flush=True)
    rss = tree_rss_peak_bytes(tree)
    largest = max(rss_peak_bytes(p) for p in tree)

    proc.terminate()
    proc.wait(90)
    await settle(admin_url, database_url)

    latencies, steady_pss, steady_rss = await steady_latency(bootstrap, admin_url, settings, args, run, "", args.rate)
    high_latencies, high_pss, high_rss = await steady_latency(
        bootstrap, admin_url, settings, args, run, "-high", args.high_rate
    )
    rss, pss = max(rss, steady_rss, high_rss), max(pss, steady_pss, high_pss)

    scale_n = min(args.scale_events, args.events)
    scale = {k: await scale_out(bootstrap, admin_url, topic, settings, scale_n, k, run) for k in (1, 2, 3)}

    copy_s, copy_url = await ceiling_copy(admin_url, events)
    copy_rate = args.events / copy_s
    print(f"ceiling (one COPY): {copy_rate:,.0f} events/s", flush=True)
    # The baseline is measured settled too (its commits would otherwise wait behind the
    # write-back of the ceiling's load, in the consumer's favour).
    await settle(admin_url, copy_url)
    sample = values[: args.per_message]
    one_s = await per_message(admin_url, sample)
    one_rate = len(sample) / one_s
    print(f"one INSERT per message ({len(sample):,} events): {one_rate:,.0f} events/s", flush=True)

    print()
    print(
        f"ingest of {args.events:,} events, {args.partitions} partitions, batches of up to "
        f"{settings.batch_max_records}, {settings.consumer_processes} consumer process(es) "
        f"(TRACKER_CONSUMER_PROCESSES) sharing {settings.consumer_writers} writers (TRACKER_CONSUMER_WRITERS)"
    )
    print(f"  consumer (validate + dead-letter + events + trace state, commit): {consumer_rate:>10,.0f} events/s")
    print(
        f"  ceiling: one COPY of the same rows, events table only:           {copy_rate:>10,.0f} events/s"
        f"   consumer = {consumer_rate / copy_rate:.0%} of it"
    )
    print(
        f"  ancestors: one INSERT per message:                                {one_rate:>10,.0f} events/s"
        f"   consumer = x{consumer_rate / one_rate:.1f}"
    )
    per_k = 1000 / args.events
    print(
        f"  CPU seconds per 1,000 events during the consumer phase: consumer {consumer_cpu * per_k:.3f}, "
        f"PostgreSQL {(cpu_after['postgres'] - cpu_before['postgres']) * per_k:.3f}, "
        f"broker {(cpu_after['broker'] - cpu_before['broker']) * per_k:.3f} "
        f"(2 cores = {2 * consumer_s * per_k:.3f} available)"
    )
    print(
        f"  TRACKER_CONSUMER_PROCESSES on {args.partitions} partitions ({scale_n:,} events): "
        + ", ".join(f"{k}: {rate:,.0f} events/s" for k, rate in scale.items())
    )
    print(
        f"  consumer memory, its {len(tree)} process(es) summed: peak PSS {pss / 2**20:.0f} MiB "
        f"(peak RSS {rss / 2**20:.0f} MiB, largest process {largest / 2**20:.0f} MiB)   "
        f"(target <= 150 MiB: {'met' if pss <= 150 * 2**20 else 'NOT met'})"
    )
    for rate, seconds, target in ((args.rate, latencies, 0.25), (args.high_rate, high_latencies, 1.0)):
        p99 = percentile(seconds, 99)
        print(
            f"  produce-to-queryable at {rate:,} events/s for {args.latency_seconds:.0f} s "
            f"({len(seconds):,} events): p50 {percentile(seconds, 50) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms   "
            f"(target p99 <= {target * 1000:.0f} ms: {'met' if p99 <= target else 'NOT met'})"
        )
    print(
        f"  targets: consumer >= 40% of the ceiling: {'met' if consumer_rate >= 0.4 * copy_rate else 'NOT met'}; "
        f">= x10 one INSERT per message: {'met' if consumer_rate >= 10 * one_rate else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-message", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=None, help="TRACKER_BATCH_MAX_RECORDS (default: the setting's)")
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--high-rate", type=int, default=8000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--scale-events", type=int, default=300_000)
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="TRACKER_CONSUMER_PROCESSES of the consumer measured (default: one per core)",
    )
    args = parser.parse_args()
    # The local services are started outside the event loop (their readiness checks run their own).
    with services() as (bootstrap, admin_url):
        asyncio.run(main_async(args, bootstrap, admin_url))


if __name__ == "__main__":
    main()
