"""How long a consumer restarted after kill -9 takes to store events again.

A dynamic member that dies keeps its partitions until its session times out
(TRACKER_KAFKA_SESSION_TIMEOUT_MS, 10 s by default): with a supervisor restarting
it, every crash is that long without progress. A static member
(TRACKER_CONSUMER_INSTANCE_ID) rejoins under the same id and the broker hands its
partitions straight back. Both are measured here in the same run, from the kill
to the first event stored after it, over several restarts each.

    python -m bench.restart [--restarts 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.common import fresh_database, services
from bench.ingest import start_consumer
from tracker.devservices.ports import free_port
from tracker.producer import start_producer
from tracker.settings import Settings
from tracker.topics import ensure_topics


async def _send(producer, topic: str, trace_id: str) -> None:
    doc = (
        f'{{"trace_id": "{trace_id}", "service": "bench", "status": "received", '
        f'"timestamp": "{datetime.now(UTC).isoformat()}"}}'
    ).encode()
    await producer.send_and_wait(topic, doc, key=trace_id.encode())


async def _until_stored(
    conn, producer, topic: str, trace_id: str, proc: subprocess.Popen, timeout: float = 120
) -> float:
    """Send one event now and then every 0.2 s (any partition), until one is stored."""
    started = time.monotonic()
    n = 0
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the consumer exited with {proc.returncode}")
        await _send(producer, topic, f"{trace_id}-{n % 12}")
        n += 1
        await asyncio.sleep(0.2)
        stored = await conn.fetchval("SELECT count(*) FROM events WHERE trace_id LIKE $1", f"{trace_id}-%")
        if stored:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit(f"nothing stored {timeout:.0f} s after the restart")


async def measure(bootstrap: str, admin_url: str, *, static: bool, restarts: int) -> list[float]:
    run = uuid.uuid4().hex[:8]
    topic = f"bench.restart.{run}"
    await ensure_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=6)
    database_url = await fresh_database(admin_url, prefix="bench_restart")
    settings = Settings.from_env(
        {},
        kafka_bootstrap_servers=bootstrap,
        database_url=database_url,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        consumer_group=f"bench-restart-{run}",
        consumer_port=free_port(),
        log_level="WARNING",
        consumer_instance_id=f"bench-consumer-{run}" if static else None,
    )
    log_path = Path(f"/tmp/bench-restart-{run}.log")
    conn = await asyncpg.connect(database_url)
    producer = await start_producer(bootstrap, acks="all")
    proc = start_consumer(settings, log_path)
    delays = []
    try:
        await _until_stored(conn, producer, topic, "warm-up", proc)
        for i in range(restarts):
            proc.kill()
            proc.wait()
            killed = time.monotonic()
            proc = start_consumer(settings, log_path)
            await _until_stored(conn, producer, topic, f"after-kill-{i}", proc)
            delays.append(time.monotonic() - killed)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        await producer.stop()
        await conn.close()
    return delays


async def main_async(args, bootstrap: str, admin_url: str) -> None:
    print(
        f"kill -9, restart at once, time until an event is stored again ({args.restarts} restarts each; "
        f"session timeout {Settings.from_env({}).session_timeout_ms / 1000:.0f} s)",
        flush=True,
    )
    dynamic = await measure(bootstrap, admin_url, static=False, restarts=args.restarts)
    print(
        f"  baseline, dynamic membership:        median {statistics.median(dynamic):5.1f} s, max {max(dynamic):5.1f} s",
        flush=True,
    )
    static = await measure(bootstrap, admin_url, static=True, restarts=args.restarts)
    print(
        f"  static membership (instance id set): median {statistics.median(static):5.1f} s, max {max(static):5.1f} s",
        flush=True,
    )
    ratio = statistics.median(dynamic) / max(statistics.median(static), 1e-3)
    met = max(static) < 2.0
    print(
        f"  static / dynamic: {ratio:.1f}x faster; target (every restart under 2 s): {'met' if met else 'NOT met'}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    with services() as (bootstrap, admin_url):
        asyncio.run(main_async(args, bootstrap, admin_url))


if __name__ == "__main__":
    main()
