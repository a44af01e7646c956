"""Kafka and PostgreSQL for `bin/run`, the tests and the benchmarks: the ones the settings
name (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL), or local ones started for a `with` block and
stopped when it ends. The one place that decides between the two."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tracker.devservices.kafka import LocalKafka
from tracker.devservices.postgres import LocalPostgres
from tracker.devservices.watchdog import Watchdog
from tracker.settings import Settings


@dataclass(frozen=True)
class Postgres:
    url: str  # the configured DATABASE_URL, or the local server's admin URL
    local: LocalPostgres | None  # the server started here (to restart it in tests); None if configured


@dataclass(frozen=True)
class Kafka:
    bootstrap_servers: str
    local: LocalKafka | None


@contextlib.contextmanager
def postgres(
    settings: Settings, state_dir: Path, *, durable: bool = True, watchdog: Watchdog | None = None
) -> Iterator[Postgres]:
    """``durable=False`` (fsync off) only where a lost write cannot matter: the test suite."""
    if settings.database_url:
        yield Postgres(settings.database_url, None)
        return
    server = LocalPostgres(state_dir, durable=durable)
    if watchdog is not None:
        watchdog.watch_pidfile(server.data_dir / "postmaster.pid", signal.SIGINT)  # fast shutdown
    server.start()
    try:
        yield Postgres(server.url, server)
    finally:
        server.stop()


@contextlib.contextmanager
def kafka(
    settings: Settings, state_dir: Path, *, heap: str = "768m", watchdog: Watchdog | None = None
) -> Iterator[Kafka]:
    if settings.kafka_bootstrap_servers:
        yield Kafka(settings.kafka_bootstrap_servers, None)
        return
    broker = LocalKafka(state_dir, heap=heap, java_home=settings.java_home, cache_home=settings.cache_home)
    broker.start(on_launch=watchdog.watch_pid if watchdog is not None else None)
    try:
        yield Kafka(broker.bootstrap_servers, broker)
    finally:
        broker.stop()
