"""Partitions ahead of time, retention by dropping whole partitions.

Run by the consumer at start and every TRACKER_MAINTENANCE_INTERVAL_SECONDS (default an hour),
and by `tracker retention`.
Daily partitions of `events` are created for the whole retention window (at
most PRECREATE_DAYS back) and a few days ahead, so that a late event lands in
its own day's partition, which retention later drops whole. An event dated
outside every partition (older than that, or far in the future) lands in
events_default; each run gives every day found there, within the retention
window and up to the days ahead, its partition and moves the rows in. Retention drops the partitions
older than the window and deletes the expired rows of events_default, traces
and rollups. Identifiers (partition names) are built from dates only, never
from input.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from tracker.db import Connection
from tracker.settings import Settings

log = logging.getLogger("tracker.maintenance")

_NAME = re.compile(r"^events_(\d{4})(\d{2})(\d{2})$")
# Only one maintainer at a time (several consumers run this).
_LOCK_KEY = 0x7472_6163_6B72_6D74
# Empty partitions cost planning time; with a long retention, older days get theirs
# only when an event for them arrives (the sweep of events_default below).
PRECREATE_DAYS = 62


@dataclass(frozen=True)
class MaintenanceResult:
    created: list[str]
    dropped: list[str]
    traces_deleted: int


def partition_name(day: date) -> str:
    return f"events_{day:%Y%m%d}"


async def existing_partitions(conn: Connection) -> dict[str, date]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'"
    )
    out = {}
    for row in rows:
        match = _NAME.match(row["relname"])
        if match:
            out[row["relname"]] = date(*map(int, match.groups()))
    return out


async def create_partition(conn: Connection, day: date) -> None:
    """Create one day's partition, moving any rows of that day out of events_default first."""
    name = partition_name(day)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    async with conn.transaction():
        # Writers keep inserting late events meanwhile: one that reached events_default after the
        # move and before the ATTACH would make the ATTACH fail (its row violates the new bound).
        # This lock makes them wait until the partition is attached (a moment), then their rows
        # go to it. Writers hold no lock this transaction waits for, so no cycle can form.
        await conn.execute("LOCK TABLE events_default IN SHARE ROW EXCLUSIVE MODE")
        # The name comes from a date, and the bounds are literals of dates: nothing from input.
        await conn.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        moved = await conn.execute(
            f"WITH moved AS (DELETE FROM events_default WHERE ts >= $1 AND ts < $2 RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved",
            start,
            end,
        )
        await conn.execute(
            f"ALTER TABLE events ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    if moved != "INSERT 0 0":
        log.info("created partition %s (%s rows moved from events_default)", name, moved.split()[-1])


async def maintenance_round(settings: Settings, *, wait: bool = False) -> MaintenanceResult:
    """One round on a session of its own, closed afterwards: the round holds a session-level
    advisory lock, and the consumer's writers' pool does not reset sessions on the server
    (tracker.db.keep_session), so a lock left by a round cut short must not live on in a pooled
    connection and make every other process's rounds skip."""
    import asyncpg

    conn = await asyncpg.connect(settings.database_url, server_settings={"timezone": "UTC"})
    try:
        return await run_maintenance(conn, retention_days=settings.retention_days, wait=wait)
    finally:
        await conn.close()


async def run_maintenance(
    conn: Connection, *, retention_days: int, days_ahead: int = 3, today: date | None = None, wait: bool = False
) -> MaintenanceResult:
    """Partitions for the retention window and a few days ahead, then retention. One process
    at a time (an advisory lock): the others skip the round, or with ``wait`` (a consumer
    starting, which must not write before the partitions exist) wait for it to end and then
    find the work done."""
    today = today or datetime.now(UTC).date()
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        return MaintenanceResult([], [], 0)  # another process is at it
    try:
        existing = await existing_partitions(conn)
        oldest_kept = today - timedelta(days=retention_days)
        created = []
        last = today + timedelta(days=days_ahead)
        day = max(oldest_kept, today - timedelta(days=PRECREATE_DAYS))
        while day <= last:
            if partition_name(day) not in existing:
                await create_partition(conn, day)
                created.append(partition_name(day))
            day += timedelta(days=1)
        # Late events older than the pre-created days (events_default holds only such rows).
        for row in await conn.fetch(
            "SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS day FROM events_default "
            "WHERE ts >= $1 AND ts < $2 ORDER BY 1",
            _midnight(oldest_kept),
            _midnight(last + timedelta(days=1)),
        ):
            if partition_name(row["day"]) not in existing and partition_name(row["day"]) not in created:
                await create_partition(conn, row["day"])
                created.append(partition_name(row["day"]))
        dropped = []
        for name, day in sorted(existing.items(), key=lambda kv: kv[1]):
            if day < oldest_kept:
                await conn.execute(f"DROP TABLE {name}")  # name matched ^events_YYYYMMDD$
                dropped.append(name)
        cutoff = _midnight(oldest_kept)
        traces_deleted = await _expire_rows(conn, cutoff)
        if dropped or traces_deleted:
            log.info("retention %d days: dropped %s, deleted %d traces", retention_days, dropped, traces_deleted)
        return MaintenanceResult(created, dropped, traces_deleted)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def _expire_rows(conn: Connection, cutoff: datetime) -> int:
    """Rows older than the cutoff outside the dropped partitions: default partition, state, rollups."""
    async with conn.transaction():
        await conn.execute("DELETE FROM events_default WHERE ts < $1", cutoff)
        deleted = await conn.fetchval(
            "WITH gone AS (DELETE FROM traces WHERE active_hour <= $1 AND last_at < $1 RETURNING trace_id), "
            "services AS (DELETE FROM trace_services WHERE trace_id IN (SELECT trace_id FROM gone)) "
            "SELECT count(*) FROM gone",
            cutoff,
        )
        # An hour's row holds its minutes too (migration 007); the cutoff is a midnight.
        await conn.execute("DELETE FROM rollup_counts_hour WHERE bucket < $1", cutoff)
        await conn.execute("DELETE FROM rollup_elapsed WHERE bucket < $1", cutoff)
        # Kept until they are on the dead-letter topic, whatever their age.
        await conn.execute("DELETE FROM dead_letters WHERE received_at < $1 AND published_at IS NOT NULL", cutoff)
    return deleted
