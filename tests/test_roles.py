"""The API's PostgreSQL role reads and marks tokens' use, and nothing more (tracker/roles.py)."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg
import pytest

from consumer.store import prepare_connection, write_batch
from tests.helpers.api import api_client
from tests.helpers.factories import BASE, events_of, payload_tracker
from tracker.cli import main as cli
from tracker.roles import grant_reader
from tracker.settings import Settings
from tracker.tokens import create_token

REFUSED = [
    "INSERT INTO events (event_id, trace_id, ts, service, status) VALUES ('e', 't', now(), 's', 'x')",
    "UPDATE traces SET status = 'success'",
    "DELETE FROM trace_services",
    "UPDATE rollup_counts_hour SET events = 0",
    "DELETE FROM rollup_elapsed",
    "DELETE FROM dead_letters",
    "UPDATE api_tokens SET scopes = ARRAY['admin']",
    "INSERT INTO api_tokens (name, digest, prefix, scopes) VALUES ('x', 'x', 'x', ARRAY['admin'])",
    "DELETE FROM api_tokens",
    "CREATE TABLE events_29990101 (LIKE events)",
]


@pytest.fixture
async def reader(postgres_admin_url, database_url):
    """A login role of this test's own, granted what `tracker grant-reader` grants on its database."""
    role = f"tracker_api_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_admin_url)
    await admin.execute(f"CREATE ROLE {role} LOGIN")  # trust on loopback: no password here
    try:
        owner = await asyncpg.connect(database_url)
        await grant_reader(owner, role)
        await owner.close()
        yield database_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    finally:
        owner = await asyncpg.connect(database_url)
        await owner.execute(f"DROP OWNED BY {role}")  # its grants on this database
        await owner.close()
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_the_api_role_cannot_change_events_state_rollups_or_tokens(reader):
    conn = await asyncpg.connect(reader)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
        refused = []
        for statement in REFUSED:
            try:
                await conn.execute(statement)
            except asyncpg.InsufficientPrivilegeError:
                refused.append(statement)
        assert refused == REFUSED
        # What auth needs, and only that column.
        assert await conn.execute("UPDATE api_tokens SET last_used_at = now()") == "UPDATE 0"
    finally:
        await conn.close()


async def test_the_api_serves_reads_and_checks_tokens_as_the_reader_role(reader, db, settings: Settings):
    await prepare_connection(db)
    await write_batch(db, events_of([payload_tracker("t-roles", "ingress", "received", BASE)]))
    _, token = await create_token(db, "reader test", ["read"])
    as_reader = dataclasses.replace(settings, database_url=reader, auth="on", auth_cache_seconds=0)
    with api_client(as_reader) as client:
        answer = client.get("/v1/traces/t-roles", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.json()["event_count"] == 1
        assert client.get("/v1/traces/t-roles").status_code == 401
    assert await db.fetchval("SELECT last_used_at IS NOT NULL FROM api_tokens WHERE name = 'reader test'")


def test_the_command_grants_an_existing_role_and_refuses_a_missing_one_or_a_bad_name(
    postgres_admin_url, database_url, monkeypatch
):
    import asyncio

    role = f"tracker_api_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str, url: str = postgres_admin_url) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE ROLE {role} LOGIN"))
    try:
        monkeypatch.setenv("DATABASE_URL", database_url)
        assert cli(["grant-reader", role]) == 0
        assert cli(["grant-reader", "no_such_role_here"]) == 2
        assert cli(["grant-reader", 'x"; DROP TABLE events; --']) == 2
    finally:
        asyncio.run(admin(f"DROP OWNED BY {role}", database_url))
        asyncio.run(admin(f"DROP ROLE {role}"))
