"""Reads from a real streaming replica (pg_basebackup -R of the suite's PostgreSQL): served by
it, saying how old they are, and from the primary while it is down or lagging."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from consumer.store import prepare_connection, write_batch
from tests.helpers.api import api_client
from tests.helpers.factories import BASE, events_of, payload_tracker
from tests.helpers.ingest import wait_until
from tracker.api.replicas import REPLAY_TIME_HEADER
from tracker.devservices.postgres import database_url as url_on
from tracker.settings import Settings


@pytest.fixture(scope="module")
def standby(local_postgres, services_dir):
    if local_postgres is None:
        pytest.skip("needs the suite's own PostgreSQL to replicate (DATABASE_URL names another server)")
    replica = local_postgres.standby(services_dir / f"standby-{uuid.uuid4().hex[:8]}")
    yield replica
    replica.stop()


@pytest.fixture
def replica_url(standby, database_url) -> str:
    """This test's database, on the standby."""
    return url_on(standby.url, database_url.rsplit("/", 1)[1])


@pytest.fixture
def read_settings(settings: Settings, replica_url: str) -> Settings:
    return dataclasses.replace(
        settings, database_read_urls=replica_url, replica_check_seconds=0.2, replica_max_lag_seconds=30
    )


async def write(database_url: str, trace_id: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        from tracker.db import init_connection

        await init_connection(conn)
        await prepare_connection(conn)
        await write_batch(conn, events_of([payload_tracker(trace_id, "ingress", "received", BASE)]))
    finally:
        await conn.close()


async def replay(standby, name: str, action: str) -> None:
    conn = await asyncpg.connect(url_on(standby.url, name))
    try:
        await conn.execute(f"SELECT pg_wal_replay_{action}()")  # pause or resume: ours, not input
    finally:
        await conn.close()


async def test_reads_are_served_by_the_replica_and_say_how_old_they_are(standby, database_url, read_settings):
    name = database_url.rsplit("/", 1)[1]
    await write(database_url, "first")
    with api_client(read_settings) as client:
        first = await wait_until(
            lambda: (r := client.get("/v1/traces/first")).status_code == 200 and r, "trace first on the replica", 30
        )
        assert REPLAY_TIME_HEADER in first.headers
        # With replay paused, a trace written on the primary is not on the replica: a 404 now
        # shows that the replica answers, and its replay time is before the write.
        await replay(standby, name, "pause")
        try:
            await write(database_url, "second")
            written = datetime.now(UTC)
            answer = client.get("/v1/traces/second")
            assert answer.status_code == 404
            assert replay_time(answer) < written
            ready = client.get("/readyz").json()
            assert [(r["in_use"], r["reason"]) for r in ready["replicas"]] == [(True, None)]
        finally:
            await replay(standby, name, "resume")
        # Replay resumed: the trace is there, and once a check has seen the replica catch up,
        # the replay time says so (until then it is the older, still true, lower bound).
        await wait_until(lambda: client.get("/v1/traces/second").status_code == 200, "trace second after resume", 30)
        await wait_until(
            lambda: replay_time(client.get("/v1/traces/second")) > written, "a replay time after the write", 30
        )


def replay_time(answer) -> datetime:
    return datetime.fromisoformat(answer.headers[REPLAY_TIME_HEADER])


async def test_a_lagging_replica_is_skipped_until_it_catches_up(standby, database_url, read_settings):
    name = database_url.rsplit("/", 1)[1]
    settings = dataclasses.replace(read_settings, replica_max_lag_seconds=1)
    await write(database_url, "before")
    with api_client(settings) as client:
        await wait_until(
            lambda: REPLAY_TIME_HEADER in client.get("/v1/traces/before").headers, "reads from the replica", 30
        )
        await replay(standby, name, "pause")
        try:
            await write(database_url, "during")
            # Over the lag bound, reads go to the primary: the new trace, and no replay time.
            answer = await wait_until(
                lambda: (r := client.get("/v1/traces/during")).status_code == 200 and r, "reads from the primary", 30
            )
            assert REPLAY_TIME_HEADER not in answer.headers
            (replica,) = client.get("/readyz").json()["replicas"]
            assert not replica["in_use"] and "TRACKER_REPLICA_MAX_LAG" in replica["reason"]
            assert replica["lag_seconds"] > 1
            metrics = client.get("/metrics").text
            assert f'tracker_api_replica_in_use{{replica="{standby_name(standby)}"}} 0.0' in metrics
        finally:
            await replay(standby, name, "resume")
        await wait_until(
            lambda: REPLAY_TIME_HEADER in client.get("/v1/traces/during").headers, "the replica used again", 30
        )
        assert client.get("/readyz").json()["replicas"][0]["in_use"]


async def test_a_stopped_replica_is_skipped_and_used_again_when_it_is_back(standby, database_url, read_settings):
    await write(database_url, "t")
    with api_client(read_settings) as client:
        await wait_until(lambda: REPLAY_TIME_HEADER in client.get("/v1/traces/t").headers, "reads from the replica", 30)
        standby.stop()
        try:
            # At once, before any check has seen it go: the connection it refuses sends the
            # read to the primary. No request fails.
            answers = [client.get("/v1/traces/t") for _ in range(20)]
            assert [a.status_code for a in answers] == [200] * 20
            assert not any(REPLAY_TIME_HEADER in a.headers for a in answers)
            (replica,) = client.get("/readyz").json()["replicas"]
            assert not replica["in_use"] and replica["reason"]
        finally:
            standby.start_again()
        await wait_until(lambda: REPLAY_TIME_HEADER in client.get("/v1/traces/t").headers, "reads from the replica", 30)
        assert client.get("/readyz").json()["replicas"][0]["in_use"]


def standby_name(standby) -> str:
    return f"127.0.0.1:{standby.port}"
