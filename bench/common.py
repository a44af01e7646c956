"""What the benchmarks share: the services (configured, or started locally),
fresh databases, and a realistic data set."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tracker.devservices import services as devservices
from tracker.devservices.postgres import create_database
from tracker.events import Event, parse_message
from tracker.migrate import migrate
from tracker.settings import Settings

SERVICES = [f"service-{i:02d}" for i in range(20)]


@contextlib.contextmanager
def services(postgres: bool = True, kafka: bool = True):
    """(kafka bootstrap, postgres admin URL): the configured ones, or local ones for this run
    (None for one not asked for)."""
    settings = Settings.from_env()
    state = Path(tempfile.mkdtemp(prefix="tracker-bench-"))
    state.chmod(0o755)
    try:
        with contextlib.ExitStack() as started:
            # Durable settings (fsync on): the numbers are what a real server would give.
            pg = (
                started.enter_context(devservices.postgres(settings, state / "postgres", durable=True))
                if postgres
                else None
            )
            broker = started.enter_context(devservices.kafka(settings, state / "kafka", heap="1g")) if kafka else None
            yield (broker.bootstrap_servers if broker else None), (pg.url if pg else None)
    finally:
        shutil.rmtree(state, ignore_errors=True)


async def fresh_database(admin_url: str, prefix: str = "bench") -> str:
    url = await create_database(admin_url, f"{prefix}_{uuid.uuid4().hex[:8]}")
    await migrate(url)
    return url


def dataset(n: int, seed: int = 1, events_per_trace: int = 10) -> list[tuple[bytes, bytes]]:
    """(key, value) messages: ~10 events per trace, 20 services, bodies of a few hundred bytes,
    half Payload Tracker messages and half Status API events, spread over the last 13 days, in
    the order they happened: a topic is appended as a pipeline works, so traces interleave and
    consecutive messages are close in time. (Until session 5 the messages came trace after
    trace, each trace at a random moment of the 13 days: neighbours in a partition were hours
    apart, as in no topic a pipeline writes, and almost every event opened its own rollup rows.)

    Dated from today, not a fixed day: the data must stay inside the default retention (14
    days), where daily partitions exist, or it all lands in events_default and the benchmark
    measures a table no deployment would write to."""
    rng = random.Random(seed)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=13)
    out: list[tuple[datetime, bytes, bytes]] = []
    trace_no = 0
    while len(out) < n:
        trace_no += 1
        trace_id = f"{uuid.UUID(int=rng.getrandbits(128))}"
        at = start + timedelta(seconds=rng.randrange(13 * 86400))
        services = rng.sample(SERVICES, events_per_trace // 2)
        status_api = trace_no % 2 == 0
        for i, service in enumerate(services):
            for step in ("received", "success"):
                at += timedelta(milliseconds=rng.randrange(5, 3000))
                if status_api:
                    doc = {
                        "trace_id": trace_id,
                        "trace_event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "component": service,
                        "operation": f"{service}.handle",
                        "trace_event_status": "OK",
                        "trace_status": "CONTINUE",
                        "start_time": (at - timedelta(milliseconds=400)).isoformat(),
                        "end_time": at.isoformat(),
                        "domain": "datasets",
                        "domain_id": f"ds-{trace_no % 5000}",
                        "status_body": {
                            "files_incoming": [f"s3://raw/{trace_id}/{k}.csv" for k in range(2)],
                            "files_outgoing": [f"s3://clean/{trace_id}/{k}.parquet" for k in range(2)],
                        },
                        "meta": {"git_rev": "9f3c2ab", "version": "1.4.2"},
                    }
                    if step == "success" and i == len(services) - 1:
                        doc["trace_status"] = "FINISHED"
                else:
                    doc = {
                        "service": service,
                        "source": "inventory",
                        "account": f"{trace_no % 100000:07d}",
                        "org_id": str(trace_no % 20000),
                        "request_id": trace_id,
                        "inventory_id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "system_id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "status": step,
                        "status_msg": f"{service} {step} payload {trace_id} after validation of 3 files, "
                        "checksums verified, forwarded to the next stage of the pipeline",
                        "date": at.isoformat(),
                    }
                out.append((at, trace_id.encode(), json.dumps(doc).encode()))
                if len(out) == n:
                    break
            if len(out) == n:
                break
    out.sort(key=lambda item: item[0])  # stable: a trace's events keep their order
    return [(key, value) for _, key, value in out]


def rss_peak_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run(coro):
    return asyncio.run(coro)


def valid_events(values) -> list[Event]:
    """The benchmark's messages as events; every one must be valid (a data set bug otherwise)."""
    events = []
    for value in values:
        event = parse_message(value, max_bytes=1 << 20)
        if not isinstance(event, Event):
            raise ValueError(f"a benchmark message is invalid: {event}")
        events.append(event)
    return events
