"""The asyncpg pool: one place that knows how we talk to PostgreSQL."""

from __future__ import annotations

import json

import asyncpg
import orjson

from tracker.settings import Settings

# Errors after which the same work may succeed if retried: the server went
# away, restarted, or chose us as a deadlock/serialization victim.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.InterfaceError,
    # A protocol state left behind by a connection lost mid-operation; the consumer
    # discards that connection and retries on a fresh one.
    asyncpg.exceptions.InternalClientError,
)


async def init_connection(conn: asyncpg.Connection) -> None:
    """JSON codecs once per connection, so jsonb columns take and give Python objects.

    Binary format, because the consumer writes with COPY, which is binary in
    asyncpg and has no text-format fallback for custom codecs.
    """
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode,
                              schema="pg_catalog", format="binary")
    await conn.set_type_codec("json", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _jsonb_encode(value) -> bytes:
    return b"\x01" + orjson.dumps(value)  # jsonb binary format: version 1, then the text


def _jsonb_decode(data: bytes):
    return orjson.loads(data[1:])


async def create_pool(settings: Settings, **kwargs) -> asyncpg.Pool:
    # UTC sessions: times that PostgreSQL renders itself (JSON documents) read like Python's.
    options = {"min_size": settings.db_pool_min, "max_size": settings.db_pool_max, "init": init_connection,
               "server_settings": {"timezone": "UTC"}}
    return await asyncpg.create_pool(settings.database_url, **{**options, **kwargs})
