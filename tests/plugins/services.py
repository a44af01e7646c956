"""Real Kafka and PostgreSQL for the suite: started once per session, or taken
from KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL. Each test gets its own topics and
its own database (a clone of a migrated template)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tracker.devservices import services as devservices
from tracker.devservices.ports import free_port
from tracker.devservices.postgres import create_database, drop_database
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
def postgres_service(services_dir):
    """DATABASE_URL's server, or the suite's own (fsync off: nothing here must survive a power cut)."""
    with devservices.postgres(Settings.from_env(), services_dir / "postgres", durable=False) as service:
        yield service


@pytest.fixture(scope="session")
def kafka_service(services_dir):
    """KAFKA_BOOTSTRAP_SERVERS' broker, or the suite's own."""
    with devservices.kafka(Settings.from_env(), services_dir / "kafka", heap="512m") as service:
        yield service


@pytest.fixture(scope="session")
def local_postgres(postgres_service):
    """The suite's own PostgreSQL, to stop and restart; None when DATABASE_URL names one."""
    return postgres_service.local


@pytest.fixture(scope="session")
def local_kafka(kafka_service):
    """The suite's own Kafka broker, to restart; None when KAFKA_BOOTSTRAP_SERVERS names one."""
    return kafka_service.local


@pytest.fixture(scope="session")
def postgres_admin_url(postgres_service) -> str:
    return postgres_service.url


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_service) -> str:
    return kafka_service.bootstrap_servers


# Test events are dated 2026-01-01 and on: nothing of them may expire.
TEST_RETENTION_DAYS = 3650


@pytest.fixture(scope="session")
def template_database(postgres_admin_url) -> Iterator[str]:
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
async def database_url(postgres_admin_url, template_database) -> AsyncIterator[str]:
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
