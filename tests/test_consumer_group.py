"""Several consumer processes under one command (TRACKER_CONSUMER_PROCESSES), as real processes:
they split the partitions, store each event once, report through the parent's port, and
neither outlives the other unnoticed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.group import merge_expositions
from tests.helpers.ingest import assert_exactly_once, produce, valid_events, wait_stored, workload


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as response:
            return response.status, await response.text()


def _samples(text: str, family_name: str) -> list:
    return [s for f in text_string_to_metric_families(text) if f.name == family_name for s in f.samples]


async def _member_pids(settings) -> list[int]:
    status, text = await _get(f"http://{settings.consumer_host}:{settings.consumer_port}/healthz")
    assert status == 200, text
    return [p["pid"] for p in json.loads(text)["processes"]]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


async def _wait_gone(pids: list[int], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids):
        assert time.monotonic() < deadline, f"still running after {timeout}s: {[p for p in pids if _running(p)]}"
        await asyncio.sleep(0.2)


async def test_consumer_processes_split_the_partitions_and_store_each_event_once(settings, launch, db, kafka_bootstrap):
    messages = workload(traces=1500, seed=31, prefix="group")
    events = valid_events(messages)
    settings = dataclasses.replace(settings, consumer_processes=3, batch_max_records=300)
    consumer = await launch.consumer(settings)
    metrics_url = f"http://{settings.consumer_host}:{settings.consumer_port}/metrics"
    # The members join one after the other; once the group has settled, each holds one of the
    # topic's 3 partitions (the first to join held all three for a moment).
    deadline = time.monotonic() + 60
    while True:
        status, text = await _get(metrics_url)
        assert status == 200
        assigned = {s.labels["process"]: s.value for s in _samples(text, "tracker_consumer_assigned_partitions")}
        if assigned == {"0": 1, "1": 1, "2": 1}:
            break
        assert time.monotonic() < deadline, f"partitions per process after 60s: {assigned}"
        await asyncio.sleep(0.5)
    await produce(kafka_bootstrap, settings.topic, messages)
    await wait_stored(db, len({e.event_id for e in events}), process=consumer)
    await assert_exactly_once(db, events)

    # One scrape of the parent's port shows every member's work, each series labelled by process.
    status, text = await _get(metrics_url)
    stored = [
        s
        for s in _samples(text, "tracker_consumer_messages")
        if s.name.endswith("_total") and s.labels["result"] == "stored"
    ]
    assert all(s.value > 0 for s in stored) and {s.labels["process"] for s in stored} == {"0", "1", "2"}
    assert sum(s.value for s in stored) == len({e.event_id for e in events})
    assert consumer.terminate() == 0


async def test_a_killed_parent_takes_its_consumer_processes_with_it(settings, launch, db, kafka_bootstrap):
    messages = workload(traces=800, seed=32, prefix="orphan")
    events = valid_events(messages)
    group = await launch.consumer(dataclasses.replace(settings, consumer_processes=2))
    members = await _member_pids(settings)
    assert len(members) == 2 and all(_running(p) for p in members)
    group.kill()  # SIGKILL: the parent runs no code at all
    await _wait_gone(members)
    # Nothing consumed in between is lost: a plain consumer in the same group stores it all once.
    await produce(kafka_bootstrap, settings.topic, messages)
    consumer = await launch.consumer(settings, name="after")
    await wait_stored(db, len({e.event_id for e in events}), process=consumer)
    await assert_exactly_once(db, events)


async def test_a_consumer_process_that_dies_ends_the_group_with_an_error(settings, launch):
    group = await launch.consumer(dataclasses.replace(settings, consumer_processes=2))
    members = await _member_pids(settings)
    os.kill(members[0], 9)
    deadline = time.monotonic() + 90
    while group.alive:
        assert time.monotonic() < deadline, "the parent kept running without one of its processes"
        await asyncio.sleep(0.2)
    assert group.proc.returncode != 0
    assert not _running(members[1]), "the other process outlived the group"
    assert "consumer process 0" in group.log() and "exited" in group.log()


def _member_text(index: int) -> str:
    """One member's /metrics as generate_latest writes it: a labelled counter (with its _created
    samples), a gauge without labels, a labelled histogram, a family with no sample yet, and
    label values holding what the text format escapes or what could be mistaken for syntax."""
    registry = CollectorRegistry()
    counter = Counter("tracker_demo_messages", "Messages.", ["result"], registry=registry)
    counter.labels("stored").inc(10 + index)
    counter.labels('odd "value" {x} a,b\\c\nd').inc(2)
    Gauge("tracker_demo_lag_messages", "Lag.", registry=registry).set(7 * index)
    histogram = Histogram("tracker_demo_write_seconds", "Writes.", ["kind"], buckets=(0.1, 1), registry=registry)
    histogram.labels("copy").observe(0.05 * (index + 1))
    Counter("tracker_demo_unused", "Nothing yet.", ["service"], registry=registry)
    return generate_latest(registry).decode()


def test_the_parents_metrics_are_every_members_samples_each_labelled_by_process():
    texts = [(0, _member_text(0)), (1, _member_text(1))]
    merged = merge_expositions(texts)

    families = {f.name: f for f in text_string_to_metric_families(merged)}
    expected = {
        (s.name, tuple(sorted({**s.labels, "process": str(index)}.items())), s.value)
        for index, text in texts
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    got = {(s.name, tuple(sorted(s.labels.items())), s.value) for f in families.values() for s in f.samples}
    assert got == expected and len(expected) > 10
    assert {name: f.type for name, f in families.items()} == {
        "tracker_demo_messages": "counter",
        "tracker_demo_messages_created": "gauge",  # the classic text format's own families
        "tracker_demo_lag_messages": "gauge",
        "tracker_demo_write_seconds": "histogram",
        "tracker_demo_write_seconds_created": "gauge",
        "tracker_demo_unused": "counter",
    }
    # Each family's HELP and TYPE once, its samples together (the text format requires both; a
    # family split in two would parse as two of one name, and the dict above would keep one).
    assert (
        merged.count("# HELP tracker_demo_messages_total ") == merged.count("# TYPE tracker_demo_messages_total ") == 1
    )
