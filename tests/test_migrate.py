"""`tracker migrate`: applies the numbered files once, records them, and is a no-op the second time."""

from __future__ import annotations

import subprocess
import sys
import uuid

import asyncpg

from tracker.devservices.postgres import create_database, drop_database
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
        out = subprocess.run([sys.executable, "-m", "tracker.cli", "migrate"], capture_output=True, text=True,
                             env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0 and out.stdout.strip() == "up to date", out
    finally:
        await drop_database(postgres_admin_url, name)
