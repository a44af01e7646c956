"""`tracker migrate`: applies the numbered files once, records them, and is a no-op the second time;
a migration that reshapes data keeps it."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import uuid

import asyncpg

from consumer.store import prepare_connection, write_batch
from tests.helpers.factories import events_of, pipeline_trace
from tests.helpers.reference import expected_rollups, stored_rollups
from tracker.db import init_connection
from tracker.devservices.postgres import create_database, drop_database
from tracker.events import Event
from tracker.migrate import migrate, migration_files


async def test_migrate_applies_every_file_once_then_is_a_no_op(postgres_admin_url):
    name = f"tracker_migrate_{uuid.uuid4().hex[:8]}"
    url = await create_database(postgres_admin_url, name)
    try:
        first = await migrate(url)
        assert first == [path.name for _, path in migration_files()]
        assert await migrate(url) == []
        conn = await asyncpg.connect(url)
        recorded = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")]
        await conn.close()
        assert recorded == first
        # The console script does the same, and says so.
        out = subprocess.run(
            [sys.executable, "-m", "tracker.cli", "migrate"],
            capture_output=True,
            text=True,
            env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0 and out.stdout.strip() == "up to date", out
    finally:
        await drop_database(postgres_admin_url, name)


async def test_the_per_minute_counts_move_into_their_hour_rows_unchanged(postgres_admin_url, tmp_path):
    """Migration 007 folds the per-minute rollup rows of a database written before it into
    their hour's row; afterwards the per-minute view and the hourly totals still equal the
    counts computed from scratch, and the consumer adds to the converted rows."""
    rng = random.Random(7)
    events = [e for i in range(6) for e in _events(pipeline_trace(f"t{i}", rng, services=3))]
    counts, _ = expected_rollups(events)
    before_007 = tmp_path / "migrations"
    before_007.mkdir()
    for version, path in migration_files():
        if version < 7:
            shutil.copy(path, before_007)
    name = f"tracker_migrate_{uuid.uuid4().hex[:8]}"
    url = await create_database(postgres_admin_url, name)
    try:
        await migrate(url, before_007)
        conn = await asyncpg.connect(url)
        # The rows the consumer wrote under migrations 002/003: one per minute, and per hour.
        await conn.executemany(
            "INSERT INTO rollup_counts (bucket, service, status, events) VALUES ($1, $2, $3, $4)",
            [(*key, n) for key, n in counts.items()],
        )
        await conn.execute(
            "INSERT INTO rollup_counts_hour (bucket, service, status, events) "
            "SELECT date_trunc('hour', bucket), service, status, sum(events) FROM rollup_counts "
            "GROUP BY 1, 2, 3"
        )
        assert (await migrate(url))[0] == "007_minute_counts_in_hour_rows.sql"
        assert (await stored_rollups(conn))[0] == counts
        # Same again, on top of the converted rows: every count doubles.
        await init_connection(conn)
        await prepare_connection(conn)
        await write_batch(conn, events)
        assert (await stored_rollups(conn))[0] == {key: 2 * n for key, n in counts.items()}
        await conn.close()
    finally:
        await drop_database(postgres_admin_url, name)


def _events(docs) -> list[Event]:
    return events_of(docs)
