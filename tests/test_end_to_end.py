"""The whole path as users run it: a real producer -> Kafka -> the consumer process
-> PostgreSQL -> the API process -> HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.helpers.api import get_json, wait_for_trace
from tests.helpers.factories import encode, payload_tracker
from tests.helpers.ingest import wait_stored
from tests.helpers.kafka import read_all, wait_all_committed


@pytest.fixture
async def producer(kafka_bootstrap):
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    yield producer
    await producer.stop()


async def test_produced_events_of_both_formats_are_visible_through_the_api(settings, launch, producer):
    await launch.consumer(settings)
    await launch.api(settings)
    now = datetime.now(UTC)
    trace = "e2e-both-formats"
    docs = [
        payload_tracker(trace, "ingress", "received", now - timedelta(seconds=3), account="0001"),
        payload_tracker(trace, "ingress", "success", now - timedelta(seconds=2)),
        # Status API, legacy names, finishing the trace with a failure
        {
            "id": trace,
            "handler": "copy",
            "status": "FAILED",
            "run_status": "FINISHED",
            "date_started": (now - timedelta(seconds=2)).isoformat(),
            "date_end": now.isoformat(),
            "errors": [{"message": {"nb": "feil", "en": "bucket missing"}}],
        },
    ]
    sent_at = time.monotonic()
    for doc in docs:
        await producer.send_and_wait(settings.topic, encode(doc), key=trace.encode())
    state = await wait_for_trace(settings.api_url, trace, len(docs))
    visible_after = time.monotonic() - sent_at

    assert state["done"] is True and state["status"] == "failed"
    assert [s["service"] for s in state["services"]] == ["ingress", "copy"]
    ingress = state["services"][0]
    assert ingress["latest_status"] == "success" and ingress["elapsed_seconds"] == pytest.approx(1.0)
    assert state["elapsed_seconds"] == pytest.approx(3.0)
    assert [e["message"] for e in state["errors"]] == ["bucket missing"]
    assert visible_after < 5, f"took {visible_after:.2f}s to become visible"

    code, history, _ = await get_json(f"{settings.api_url}/v1/traces/{trace}/events")
    assert code == 200
    assert [(e["service"], e["status"]) for e in history["data"]] == [
        ("ingress", "received"),
        ("ingress", "success"),
        ("copy", "error"),
    ]
    assert [e["format"] for e in history["data"]] == ["payload_tracker", "payload_tracker", "status_api"]
    assert history["next_cursor"] is None


async def test_malformed_messages_are_dead_lettered_and_never_stop_the_consumer(
    settings, launch, producer, kafka_bootstrap
):
    consumer = await launch.consumer(settings)
    await launch.api(settings)
    now = datetime.now(UTC)
    bad = [
        b"{not json",
        b"\xff\xfe",
        None,
        encode([1, 2]),
        encode({"service": "x", "status": "received"}),
        encode({"id": "a", "trace_id": "b", "handler": "h", "status": "OK", "date_end": now.isoformat()}),
    ]
    good = [payload_tracker(f"e2e-good-{i}", "ingress", "received", now) for i in range(len(bad))]
    for value, doc in zip(bad, good, strict=True):
        await producer.send_and_wait(settings.topic, value, key=b"k")
        await producer.send_and_wait(settings.topic, encode(doc), key=b"k")

    for i in range(len(good)):
        await wait_for_trace(settings.api_url, f"e2e-good-{i}", 1)
    dead = await read_all(kafka_bootstrap, settings.dlq_topic, len(bad))
    assert len(dead) == len(bad)
    reasons = []
    for record in dead:
        headers = dict(record.headers)
        assert headers["tracker.source.topic"].decode() == settings.topic
        assert int(headers["tracker.source.partition"]) >= 0 and int(headers["tracker.source.offset"]) >= 0
        assert headers["tracker.detail"]
        reasons.append(headers["tracker.reason"].decode())
    assert sorted(reasons) == sorted(
        ["not_json", "not_utf8", "null_value", "not_object", "missing_field", "conflicting_fields"]
    )
    assert [r.value for r in dead] == bad  # the original bytes, in order (one key, one partition)
    assert consumer.alive

    code, metrics, _ = await get_text(f"http://127.0.0.1:{settings.consumer_port}/metrics")
    assert code == 200
    assert 'tracker_consumer_invalid_messages_total{reason="not_json"} 1.0' in metrics
    assert 'tracker_consumer_messages_total{result="dead_lettered"} 6.0' in metrics


async def get_text(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            return response.status, await response.text(), response.headers["Content-Type"]


async def group_members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_consumer_groups([group])
        [(_error, _group, _state, _protocol_type, _protocol, members, *_)] = description.groups
        return len(members)
    finally:
        await admin.close()


async def test_consumer_exits_cleanly_on_sigterm_and_resumes_where_it_committed(
    settings, launch, producer, db, kafka_bootstrap
):
    consumer = await launch.consumer(settings)
    now = datetime.now(UTC)
    for i in range(50):
        await producer.send(
            settings.topic, encode(payload_tracker(f"stop-{i % 5}", "svc", f"s{i}", now)), key=f"stop-{i % 5}".encode()
        )
    await producer.flush()
    await wait_stored(db, 50, timeout=30, process=consumer)
    assert consumer.terminate() == 0
    # It left the group on its way out (a crashed member stays until its session times out).
    assert await group_members(kafka_bootstrap, settings.consumer_group) == 0

    for i in range(50, 60):
        await producer.send(
            settings.topic, encode(payload_tracker(f"stop-{i % 5}", "svc", f"s{i}", now)), key=f"stop-{i % 5}".encode()
        )
    await producer.flush()
    restarted = await launch.consumer(settings, name="consumer-2")
    await wait_stored(db, 60, timeout=30, process=restarted)
    assert await db.fetchval("SELECT count(*) FROM events") == 60
    assert await db.fetchval("SELECT sum(event_count) FROM traces") == 60
    # Offsets were committed before the stop: the restarted consumer saw only the 10 new messages
    # (counted once it has committed them all, so that nothing is still on its way).
    await wait_all_committed(kafka_bootstrap, settings.topic, settings.consumer_group)
    _, metrics, _ = await get_text(f"http://127.0.0.1:{settings.consumer_port}/metrics")
    assert 'tracker_consumer_messages_total{result="stored"} 10.0' in metrics
    assert 'tracker_consumer_messages_total{result="duplicate"} 0.0' in metrics
    assert restarted.alive


async def test_api_errors_are_problem_json_with_a_reason(settings, launch):
    await launch.api(settings)
    code, body, ctype = await get_json(f"{settings.api_url}/v1/traces/no-such-trace")
    assert code == 404 and ctype.startswith("application/problem+json")
    assert "no-such-trace" in body["detail"]
    code, body, ctype = await get_json(f"{settings.api_url}/v1/traces/x/events?limit=5000")
    assert code == 400 and ctype.startswith("application/problem+json")
    assert "limit" in body["detail"] and "1000" in body["detail"]
    code, body, _ = await get_json(f"{settings.api_url}/v1/traces/x/events?cursor=garbage")
    assert code == 400 and "next_cursor" in body["detail"]
    code, body, _ = await get_json(f"{settings.api_url}/v1/traces/x/events?order=sideways")
    assert code == 400 and "order" in body["detail"]
    code, body, _ = await get_json(f"{settings.api_url}/v1/traces/x/events?unknown=1")
    assert code == 400 and "unknown" in body["detail"]


async def test_history_pages_with_a_cursor_return_every_event_once(settings, launch, producer):
    await launch.consumer(settings)
    await launch.api(settings)
    trace = "paged"
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(25):
        # Several events share a timestamp: ties must not be skipped or repeated across pages.
        await producer.send(
            settings.topic,
            encode(payload_tracker(trace, f"svc{i % 3}", f"step{i}", base + timedelta(seconds=i // 4))),
            key=trace.encode(),
        )
    await producer.flush()
    await wait_for_trace(settings.api_url, trace, 25)
    for order in ("asc", "desc"):
        seen, cursor, pages = [], None, 0
        while True:
            url = f"{settings.api_url}/v1/traces/{trace}/events?limit=4&order={order}&include_body=false"
            code, page, _ = await get_json(url + (f"&cursor={cursor}" if cursor else ""))
            assert code == 200
            assert all("body" not in e for e in page["data"])
            seen += page["data"]
            pages += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == 25 and len({e["event_id"] for e in seen}) == 25 and pages == 7
        keys = [(e["timestamp"], e["event_id"]) for e in seen]
        assert keys == sorted(keys, reverse=order == "desc")


async def test_cli_sends_an_event_and_reports_the_trace_status(settings, launch):
    await launch.consumer(settings)
    await launch.api(settings)
    env = settings.child_environ()
    sent = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker.cli",
            "send",
            "--trace-id",
            "cli-1",
            "--service",
            "ingress",
            "--status",
            "error",
            "--message",
            "disk full",
            "--trace-status",
            "FINISHED",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["trace_id"] == "cli-1"
    await wait_for_trace(settings.api_url, "cli-1", 1)
    status = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "status", "cli-1", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert status.returncode == 1  # the trace failed: scripts can branch on it
    body = json.loads(status.stdout)
    assert body["done"] and body["status"] == "failed" and body["errors"][0]["message"] == "disk full"
    missing = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "status", "nope"], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode == 4 and "nope" in missing.stderr
    invalid = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "send"],
        input='{"trace_id": "x"}',
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert invalid.returncode == 2 and "missing_field" in invalid.stderr


def _running(pid: int) -> bool:
    """Alive and not a zombie (state Z: exited, not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def _workers(pid: int) -> set[int]:
    """The uvicorn workers of the API process ``pid``: its children that run the app (not
    multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return set()
    found = set()
    for child in map(int, children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.add(child)
    return found


async def test_the_api_with_two_workers_answers_and_replaces_a_worker_that_dies(settings, launch):
    """`python -m tracker.api --workers 2` (TRACKER_API_WORKERS): two worker processes share the
    port; one killed outright is replaced and the API keeps answering meanwhile."""
    api = await launch.api(dataclasses.replace(settings, api_workers=2))
    assert api.proc is not None
    deadline = time.monotonic() + 30
    while len(workers := _workers(api.proc.pid)) != 2:
        assert time.monotonic() < deadline, f"workers: {workers}"
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession(base_url=settings.api_url) as session:
        for _ in range(20):
            async with session.get("/v1/traces/no-such-trace") as response:
                assert response.status == 404
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(now := _workers(api.proc.pid)) != 2 or killed in now:
            assert time.monotonic() < deadline, f"the killed worker was not replaced: {now}"
            async with session.get("/healthz") as response:
                assert response.status == 200  # the other worker answers meanwhile
            await asyncio.sleep(0.2)
        async with session.get("/v1/traces/no-such-trace") as response:
            assert response.status == 404
    assert api.terminate() == 0
    # SIGTERM to the supervisor stops its workers too: none is left serving the port.
    for worker in now:
        assert not _running(worker), f"worker {worker} outlived the API"
