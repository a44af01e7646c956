"""Partitions are created ahead by the system, and retention drops whole partitions."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from consumer.store import prepare_connection, write_batch
from tests.helpers.factories import events_of, payload_tracker
from tracker.db import init_connection
from tracker.maintenance import _LOCK_KEY, create_partition, existing_partitions, run_maintenance

TODAY = date(2026, 3, 10)


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
async def db(db):
    """This module's tests start from no daily partition at all (the template has today's)."""
    for name in await existing_partitions(db):
        await db.execute(f"DROP TABLE {name}")  # names matched ^events_YYYYMMDD$
    yield db


async def write(db, docs):
    await prepare_connection(db)
    await write_batch(db, events_of(docs))


async def test_partitions_are_created_ahead_and_late_events_are_moved_in(db):
    # An event for a day with no partition yet lands in events_default ...
    await write(db, [payload_tracker("early", "svc", "received", at(TODAY + timedelta(days=1)))])
    assert await db.fetchval("SELECT count(*) FROM events_default") == 1
    result = await run_maintenance(db, retention_days=14, days_ahead=3, today=TODAY)
    parts = await existing_partitions(db)
    # The whole retention window: a late event lands in its own day's partition.
    assert sorted(parts.values()) == [TODAY + timedelta(days=d) for d in range(-14, 4)]
    assert len(result.created) == 18
    # ... and is moved into its day's partition when that partition is created.
    assert await db.fetchval("SELECT count(*) FROM events_default") == 0
    assert await db.fetchval("SELECT count(*) FROM events_20260311") == 1
    # New events go straight to their partition; a second run changes nothing.
    await write(db, [payload_tracker("now", "svc", "received", at(TODAY))])
    assert await db.fetchval("SELECT count(*) FROM events_20260310") == 1
    again = await run_maintenance(db, retention_days=14, days_ahead=3, today=TODAY)
    assert again.created == [] and again.dropped == []


async def test_retention_drops_whole_partitions_and_expired_state(db):
    await run_maintenance(db, retention_days=14, days_ahead=1, today=TODAY)
    await write(
        db,
        [
            payload_tracker("old", "svc", "received", at(TODAY - timedelta(days=1))),
            payload_tracker("older", "svc", "received", at(TODAY - timedelta(days=30))),
            payload_tracker("new", "svc", "received", at(TODAY)),
        ],
    )
    # Ten days later, with a 7-day retention: yesterday's partition and the older default rows go.
    later = TODAY + timedelta(days=10)
    result = await run_maintenance(db, retention_days=7, days_ahead=1, today=later)
    assert "events_20260309" in result.dropped and "events_20260310" in result.dropped
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    assert result.traces_deleted == 3
    assert await db.fetchval("SELECT count(*) FROM traces") == 0
    assert await db.fetchval("SELECT count(*) FROM trace_services") == 0
    assert await db.fetchval("SELECT count(*) FROM rollup_counts") == 0


async def test_tracker_retention_command_reports_what_it_did(db, database_url):
    out = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "retention"],
        capture_output=True,
        text=True,
        env={"DATABASE_URL": database_url, "TRACKER_RETENTION_DAYS": "14", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["retention_days"] == 14 and len(report["partitions_created"]) == 18


async def test_late_events_beyond_the_precreated_days_get_their_own_partition(db):
    await run_maintenance(db, retention_days=365, days_ahead=1, today=TODAY)
    late = TODAY - timedelta(days=100)
    await write(
        db,
        [
            payload_tracker("late", "svc", "received", at(late)),
            payload_tracker("later", "svc", "received", at(late, 13)),
            payload_tracker("expired", "svc", "received", at(TODAY - timedelta(days=400))),
        ],
    )
    assert await db.fetchval("SELECT count(*) FROM events_default") == 3
    result = await run_maintenance(db, retention_days=365, days_ahead=1, today=TODAY)
    assert result.created == [f"events_{late:%Y%m%d}"]
    assert await db.fetchval(f"SELECT count(*) FROM events_{late:%Y%m%d}") == 2
    # Older than the retention window: no partition; retention deletes it from the default.
    assert await db.fetchval("SELECT count(*) FROM events_default") == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 2


async def test_a_starting_consumer_waits_for_the_partitions_another_is_creating(db, database_url):
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)  # another process is at it
        waiting = asyncio.create_task(run_maintenance(db, retention_days=14, today=TODAY, wait=True))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "maintenance went on while another process held the lock"
        third = await asyncpg.connect(database_url)
        skipped = await run_maintenance(third, retention_days=14, today=TODAY)
        await third.close()
        assert skipped.created == []  # without wait: the round is skipped, as the periodic one is
        await other.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        result = await asyncio.wait_for(waiting, 30)
        assert TODAY in (await existing_partitions(db)).values() and result.created
    finally:
        await other.close()


async def test_a_late_event_written_while_its_partition_is_created_lands_in_it(db, database_url):
    late = TODAY - timedelta(days=100)
    writer = await asyncpg.connect(database_url)
    await init_connection(writer)
    try:
        # A writer's transaction puts a late event in events_default and is still open ...
        transaction = writer.transaction()
        await transaction.start()
        await write(writer, [payload_tracker("late-writer", "svc", "received", at(late))])
        creating = asyncio.create_task(create_partition(db, late))
        await asyncio.sleep(0.5)
        # ... when it commits, the partition is created without a check violation, with its row.
        await transaction.commit()
        await asyncio.wait_for(creating, 30)
        await write(writer, [payload_tracker("late-after", "svc", "received", at(late, 13))])
    finally:
        await writer.close()
    assert await db.fetchval(f"SELECT count(*) FROM events_{late:%Y%m%d}") == 2
    assert await db.fetchval("SELECT count(*) FROM events_default") == 0
