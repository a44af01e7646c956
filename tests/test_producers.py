"""For producers and people: the CLI as a subprocess, the producer library against the
real broker, and HTTP ingestion end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.helpers.api import api_client, get_json, wait_for_trace
from tests.helpers.factories import encode, payload_tracker
from tests.helpers.ingest import produce
from tracker.client import SyncTracker, Tracker
from tracker.devservices.ports import free_port


@pytest.fixture
async def stack(settings, launch):
    await launch.consumer(settings)
    await launch.api(settings)
    return settings


def cli(settings, *args, timeout=60, input=None):
    return subprocess.run(
        [sys.executable, "-m", "tracker.cli", *args],
        capture_output=True,
        text=True,
        env=settings.child_environ(),
        timeout=timeout,
        input=input,
    )


async def test_cli_status_history_json_and_listing_commands(stack, kafka_bootstrap):
    now = datetime.now(UTC)
    await produce(
        kafka_bootstrap,
        stack.topic,
        [
            (b"c-1", encode(payload_tracker("c-1", "ingress", "received", now - timedelta(seconds=5)))),
            (b"c-1", encode(payload_tracker("c-1", "ingress", "success", now - timedelta(seconds=3)))),
            (
                b"c-1",
                encode(
                    {
                        "trace_id": "c-1",
                        "service": "copy",
                        "status": "success",
                        "timestamp": now.isoformat(),
                        "trace_status": "FINISHED",
                        "operation": "copy_files",
                        "duration_ms": 1500,
                    }
                ),
            ),
        ],
    )
    await wait_for_trace(stack.api_url, "c-1", 3)

    table = cli(stack, "status", "c-1")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["Done", "Trace", "ID", "Status", "Elapsed", "(s)", "Errors"]
    assert "yes" in table.stdout and "success" in table.stdout

    history = cli(stack, "status", "c-1", "--history")
    lines = history.stdout.splitlines()
    assert history.returncode == 0 and any("copy_files" in line and "1.500" in line for line in lines)
    assert sum(1 for line in lines if "ingress" in line) == 2

    as_json = json.loads(cli(stack, "status", "c-1", "--format", "json", "--history").stdout)
    assert as_json["done"] and as_json["status"] == "success" and len(as_json["history"]) == 3

    found = cli(stack, "search", "--service", "copy", "--lookback", "1h")
    assert found.returncode == 0 and "c-1" in found.stdout
    services = cli(stack, "services")
    assert services.returncode == 0 and "ingress" in services.stdout and "copy" in services.stdout
    stats = json.loads(cli(stack, "stats", "--format", "json").stdout)
    assert {s["service"]: s["success_rate"] for s in stats} == {"copy": "100.0%", "ingress": "100.0%"}

    missing = cli(stack, "status", "nope")
    assert missing.returncode == 4 and "nope" in missing.stderr
    unreachable = cli(stack, "--api", "http://127.0.0.1:9", "status", "c-1")
    assert unreachable.returncode == 3 and "unreachable" in unreachable.stderr


@pytest.mark.parametrize("failed, code", [(False, 0), (True, 1)])
async def test_cli_watch_waits_until_done_then_exits_with_the_outcome(stack, kafka_bootstrap, failed, code):
    trace = f"watch-{failed}"
    now = datetime.now(UTC)
    await produce(
        kafka_bootstrap, stack.topic, [(trace.encode(), encode(payload_tracker(trace, "a", "received", now)))]
    )
    await wait_for_trace(stack.api_url, trace, 1)
    watch = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "status", trace, "--watch", "--interval", "0.2"],
        env=stack.child_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    await asyncio.sleep(1.5)
    assert watch.poll() is None, "watch returned before the trace was done"
    finish = {
        "trace_id": trace,
        "service": "b",
        "status": "error" if failed else "success",
        "timestamp": (now + timedelta(seconds=1)).isoformat(),
        "trace_status": "FINISHED",
    }
    await produce(kafka_bootstrap, stack.topic, [(trace.encode(), encode(finish))])
    out, err = await asyncio.to_thread(watch.communicate, timeout=30)
    assert watch.returncode == code, (out, err)
    assert "not done yet" in out and ("failed" if failed else "success") in out


async def test_producer_library_reports_steps_lineage_and_exceptions(stack, kafka_bootstrap):
    async with Tracker(kafka_bootstrap, service="copier", topic=stack.topic, meta={"git_rev": "abc"}) as tracker:
        trace = Tracker.new_trace_id()
        async with tracker.step(trace, "copy_files", files_incoming=["s3://raw/a"]) as step:
            await asyncio.sleep(0.05)
            step.body["files_outgoing"] = ["s3://clean/a"]
        with pytest.raises(ZeroDivisionError):
            async with tracker.step(trace, "convert"):
                _ = 1 / 0  # a real exception from the step's code
        tracker.finish(trace, failed=True, message="convert failed")
        assert await tracker.flush(20)
    assert tracker.dropped == 0 and tracker.sent == 5

    state = await wait_for_trace(stack.api_url, trace, 5)
    assert state["done"] and state["status"] == "failed"
    messages = [e["message"] for e in state["errors"]]
    assert any("ZeroDivisionError: division by zero" in m for m in messages)
    _, history, _ = await get_json(f"{stack.api_url}/v1/traces/{trace}/events")
    by_status = [(e["operation"], e["status"]) for e in history["data"]]
    assert ("copy_files", "received") in by_status and ("copy_files", "success") in by_status
    copied = next(e for e in history["data"] if e["operation"] == "copy_files" and e["status"] == "success")
    assert copied["body"] == {"files_incoming": ["s3://raw/a"], "files_outgoing": ["s3://clean/a"]}
    assert copied["duration_ms"] >= 50 and copied["meta"] == {"git_rev": "abc"}
    failed = next(e for e in history["data"] if e["operation"] == "convert" and e["status"] == "error")
    exception = json.loads(failed["exception"])
    assert exception["type"] == "ZeroDivisionError" and "Traceback" in exception["traceback"]


def test_sync_producer_library_and_its_decorator(stack, kafka_bootstrap):
    tracker = SyncTracker(kafka_bootstrap, service="sync-worker", topic=stack.topic)
    trace = tracker.new_trace_id()

    @tracker.traced("resize")
    def resize(*, trace_id):
        return "done"

    assert resize(trace_id=trace) == "done"
    tracker.finish(trace)
    assert tracker.flush(20)
    tracker.close()
    deadline = time.monotonic() + 20
    while True:
        status = cli(stack, "status", trace, "--format", "json")
        if status.returncode == 0 and json.loads(status.stdout)["done"]:
            break
        assert time.monotonic() < deadline, status.stderr
        time.sleep(0.2)
    assert json.loads(status.stdout)["status"] == "success"


async def test_producer_library_never_blocks_and_counts_drops_when_kafka_is_away():
    tracker = await Tracker("127.0.0.1:9", service="x", buffer_size=5).start()
    started = time.monotonic()
    accepted = [tracker.emit("t", "received") for _ in range(12)]
    assert time.monotonic() - started < 0.1
    assert accepted.count(True) == 5 and tracker.dropped == 7 and tracker.drops["buffer_full"] == 7
    tracker.close_timeout = 0.5
    assert await tracker.close() == 5, "close() returns the events it could not send"


async def topic_messages(bootstrap: str, topic: str) -> list[dict]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            partitions = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = {tp: await _end(consumer, tp) for tp in partitions}
        out: list[dict] = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(json.loads(r.value) for r in records)
        return out
    finally:
        await consumer.stop()


async def _end(consumer, tp):
    await consumer.seek_to_end(tp)
    end = await consumer.position(tp)
    consumer.seek(tp, 0)
    return end


async def test_producer_library_delivers_a_burst_of_thousands_before_close_returns(settings, kafka_bootstrap):
    # One Kafka round trip per event delivered ~120 events/s: this burst took ~40 s and
    # close() gave up on part of it. Batched, it is a fraction of a second.
    tracker = await Tracker(kafka_bootstrap, service="burst", topic=settings.topic, close_timeout=30).start()
    accepted = sum(tracker.emit(f"burst-{i % 100}", "received", operation="copy") for i in range(5000))
    assert accepted == 5000
    assert await tracker.close() == 0
    assert tracker.sent == 5000 and tracker.dropped == 0
    delivered = await topic_messages(kafka_bootstrap, settings.topic)
    assert len({m["event_id"] for m in delivered}) == 5000


async def test_producer_library_refuses_oversized_and_unserialisable_events_without_raising(settings, kafka_bootstrap):
    tracker = await Tracker(kafka_bootstrap, service="edge", topic=settings.topic, max_message_bytes=64 * 1024).start()
    assert tracker.emit("edge-1", "received") is True
    # Over the bound: refused at once, so it can never stall the events behind it.
    assert tracker.emit("edge-1", "success", body={"blob": "x" * 100_000}) is False
    assert tracker.emit("edge-1", "success", body={"handle": object()}) is False
    assert tracker.emit("edge-1", "success", trace_status="FINISHED") is True
    assert tracker.drops["too_large"] == 1 and tracker.drops["unserialisable"] == 1 and tracker.dropped == 2
    assert await tracker.close() == 0
    delivered = await topic_messages(kafka_bootstrap, settings.topic)
    assert sorted(m["status"] for m in delivered) == ["received", "success"]


def test_sync_producer_library_emits_from_many_threads_and_close_reports_unsent(settings, kafka_bootstrap):
    tracker = SyncTracker(kafka_bootstrap, service="threads", topic=settings.topic)
    threads = [
        threading.Thread(target=lambda n=n: [tracker.emit(f"th-{n}", "received") for _ in range(500)]) for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tracker.close() == 0 and tracker.sent == 2000
    assert len(asyncio.run(topic_messages(kafka_bootstrap, settings.topic))) == 2000


async def test_http_ingestion_end_to_end(stack):
    async with aiohttp.ClientSession(base_url=stack.api_url) as session:
        doc = payload_tracker("http-1", "ingress", "received", datetime.now(UTC))
        async with session.post("/v1/events", json=doc) as response:
            assert response.status == 202
            accepted = await response.json()
        assert accepted["trace_id"] == "http-1" and accepted["event_id"]
        state = await wait_for_trace(stack.api_url, "http-1", 1)
        assert state["services"][0]["service"] == "ingress"

        async with session.post("/v1/events", json={"service": 5, "status": "x"}) as response:
            assert response.status == 400
            assert response.headers["Content-Type"].startswith("application/problem+json")
            detail = (await response.json())["detail"]
        # Every violation is listed, not only the first.
        assert "request_id" in detail and "date" in detail and "service" in detail

        async with session.post("/v1/traces", json={"service": "uploader", "domain": "datasets"}) as response:
            assert response.status == 202  # accepted: readable once the consumer stored it
            created = await response.json()
            assert response.headers["Location"] == f"/v1/traces/{created['trace_id']}"
        state = await wait_for_trace(stack.api_url, created["trace_id"], 1)
        assert state["services"][0]["service"] == "uploader" and not state["done"]

        # Legacy Status API names are accepted over HTTP as on Kafka (the schema shows the modern ones).
        legacy = {"id": "http-legacy", "handler": "copy", "status": "OK", "date_end": datetime.now(UTC).isoformat()}
        async with session.post("/v1/events", json=legacy) as response:
            assert response.status == 202, await response.text()
        async with session.post("/v1/traces", json={"nope": 1}) as response:
            assert response.status == 400
        async with session.post("/v1/traces", json={"service": "two\nlines"}) as response:
            assert response.status == 400  # control characters are refused in identifiers
            assert "control character" in (await response.json())["detail"]
        async with session.post("/v1/traces", json={"service": "lone\udb1c"}) as response:
            assert response.status == 400  # schemathesis found this one: it was a 500
        async with session.post("/v1/traces", json={"service": "big", "body": {"n": 10**30}}) as response:
            assert response.status == 202  # so was this: an integer beyond 64 bits
        async with session.post(
            "/v1/events", data=b"\xff\x0e", headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            assert "UTF-8" in (await response.json())["detail"]


async def test_http_ingestion_without_kafka_answers_503_and_stores_nothing(settings, db):
    # Nothing listens on that port: the API's producer cannot start.
    no_kafka = dataclasses.replace(settings, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    with api_client(no_kafka) as client:
        doc = payload_tracker("never", "ingress", "received", datetime.now(UTC))
        response = client.post("/v1/events", json=doc)
        assert response.status_code == 503, response.text
        assert "retry" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM events") == 0
