"""Real Kafka and PostgreSQL for the suite: started once per session, or taken
from KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL. Each test gets its own topics and
its own database (a clone of a migrated template)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tracker.devservices.kafka import LocalKafka
from tracker.devservices.ports import free_port
from tracker.devservices.postgres import LocalPostgres, create_database, drop_database
from tracker.maintenance import run_maintenance
from tracker.migrate import migrate
from tracker.settings import Settings
from tracker.topics import ensure_topics


@pytest.fixture(scope="session")
def services_dir():
    # Not pytest's tmp_path: its parents are 0700 and the postgres user must reach the data.
    base = Path(tempfile.mkdtemp(prefix="tracker-services-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def local_postgres(services_dir):
    """The suite's own PostgreSQL, or None when DATABASE_URL names one."""
    if os.environ.get("DATABASE_URL"):
        yield None
        return
    server = LocalPostgres(services_dir / "postgres", durable=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_kafka(services_dir):
    """The suite's own Kafka broker, or None when KAFKA_BOOTSTRAP_SERVERS names one."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    broker = LocalKafka(services_dir / "kafka", heap="512m").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres_admin_url(local_postgres) -> str:
    return local_postgres.url if local_postgres else os.environ["DATABASE_URL"]


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka) -> str:
    return local_kafka.bootstrap_servers if local_kafka else os.environ["KAFKA_BOOTSTRAP_SERVERS"]


# Test events are dated 2026-01-01 and on: nothing of them may expire.
TEST_RETENTION_DAYS = 3650


@pytest.fixture(scope="session")
def template_database(postgres_admin_url) -> str:
    """A migrated database that every test's database is cloned from."""
    name = f"tracker_template_{uuid.uuid4().hex[:8]}"

    async def setup():
        url = await create_database(postgres_admin_url, name)
        await migrate(url)
        # The partitions the consumer's maintenance would create at each start (the
        # retention window of the settings fixture), made once here and cloned.
        conn = await asyncpg.connect(url)
        try:
            await run_maintenance(conn, retention_days=TEST_RETENTION_DAYS)
        finally:
            await conn.close()

    asyncio.run(setup())
    yield name
    asyncio.run(drop_database(postgres_admin_url, name))


@pytest.fixture
async def database_url(postgres_admin_url, template_database) -> str:
    """A fresh, migrated database for this test alone."""
    name = f"tracker_test_{uuid.uuid4().hex[:12]}"
    yield await create_database(postgres_admin_url, name, template=template_database)
    await drop_database(postgres_admin_url, name)


@pytest.fixture
async def db(database_url):
    """A connection to this test's database, with the project's codecs."""
    from tracker.db import init_connection

    conn = await asyncpg.connect(database_url)
    await init_connection(conn)
    yield conn
    await conn.close()


@dataclass(frozen=True)
class Topics:
    events: str
    dlq: str


@pytest.fixture
async def topics(kafka_bootstrap) -> Topics:
    """This test's own events and dead-letter topics (3 partitions each)."""
    suffix = uuid.uuid4().hex[:10]
    names = Topics(events=f"test.events.{suffix}", dlq=f"test.events.{suffix}.dlq")
    await ensure_topics(kafka_bootstrap, [names.events, names.dlq], partitions=3)
    return names


@pytest.fixture
def settings(kafka_bootstrap, database_url, topics, tmp_path) -> Settings:
    """Settings for this test's consumer and API processes: own topics, database, ports, group."""
    api_port = free_port()
    return Settings.from_env(
        {},
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=database_url,
        topic=topics.events,
        dlq_topic=topics.dlq,
        consumer_group=f"test-{uuid.uuid4().hex[:8]}",
        api_port=api_port,
        api_url=f"http://127.0.0.1:{api_port}",
        consumer_port=free_port(),
        api_validate_responses=True,
        state_dir=str(tmp_path),
        log_level="DEBUG",
        retention_days=TEST_RETENTION_DAYS,
        session_timeout_ms=6000,  # the broker's minimum: crash tests rebalance sooner
    )
