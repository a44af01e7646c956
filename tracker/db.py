"""The asyncpg pool: one place that knows how we talk to PostgreSQL."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from tracker.settings import Settings

# A connection of our own or one borrowed from a pool (a proxy with the same methods).
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


class PartitionAttached(Exception):
    """A write met a day's partition being created (tracker/maintenance.py): rows it had routed
    to events_default belong to the new partition now, and PostgreSQL refuses them there
    ("violates partition constraint"). The same write in a new transaction routes them to the
    new partition, so it is retried like an outage."""


# Errors after which the same work may succeed if retried: the server went
# away, restarted, or chose us as a deadlock/serialization victim.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    PartitionAttached,
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


async def init_connection(conn: Connection) -> None:
    """JSON codecs once per connection, so jsonb columns take and give Python objects.

    Binary format, because the consumer writes with COPY, which is binary in
    asyncpg and has no text-format fallback for custom codecs.
    """
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec("json", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _jsonb_encode(value) -> bytes:
    return b"\x01" + orjson.dumps(value)  # jsonb binary format: version 1, then the text


def _jsonb_decode(data: bytes):
    return orjson.loads(data[1:])


# PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC, as a big-endian int64.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INT64 = struct.Struct("!q")
_PG_INFINITY, _PG_MINUS_INFINITY = 2**63 - 1, -(2**63)
# asyncpg's infinities: datetime.max and datetime.min, naive, with or without a zone when sent.
_MAX, _MIN = datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)


def _timestamptz_encode(value: datetime) -> bytes:
    if value == _MAX:
        return _INT64.pack(_PG_INFINITY)
    if value == _MIN:
        return _INT64.pack(_PG_MINUS_INFINITY)
    try:
        return _INT64.pack((value - _PG_EPOCH) // _MICROSECOND)
    except TypeError:
        if value == datetime.max:
            return _INT64.pack(_PG_INFINITY)
        if value == datetime.min:
            return _INT64.pack(_PG_MINUS_INFINITY)
        raise  # a naive time: refused, never silently read as local time


def _timestamptz_decode(data: bytes) -> datetime:
    micros = _INT64.unpack(data)[0]
    if micros == _PG_INFINITY:
        return datetime.max
    if micros == _PG_MINUS_INFINITY:
        return datetime.min
    return _PG_EPOCH + timedelta(microseconds=micros)


async def use_fast_timestamps(conn: Connection) -> None:
    """timestamptz as plain arithmetic on microseconds. asyncpg's own encoder converts every
    value with astimezone() and replace(), ~1.3 µs each in CPython 3.11, and the consumer sends
    several per event (its COPY rows, the state updates' arrays): this one is a subtraction and
    a pack, a fifth of the time. Same values both ways, infinity included (tests/test_store.py);
    arrays of timestamptz use it too. Only on the consumer's connections, which write."""
    await conn.set_type_codec(
        "timestamptz", encoder=_timestamptz_encode, decoder=_timestamptz_decode, schema="pg_catalog", format="binary"
    )


async def keep_session(conn: Connection) -> None:
    """A pool's reset for sessions that keep no state of their own (no SET, LISTEN, session
    advisory lock or open cursor): asyncpg's local clean-up (a transaction left open is rolled
    back) has run already; nothing to ask the server. asyncpg's default asks it on every
    release (RESET ALL, UNLISTEN *, pg_advisory_unlock_all(), ...): a round trip and PostgreSQL
    work per API request (5 % of the API's samples under bench/query's trace lookup) and per
    consumer batch (0.8 ms of a 17 ms write at a steady 2,000 events/s)."""


async def create_pool(settings: Settings, url: str | None = None, **kwargs) -> asyncpg.Pool:
    """A pool on ``url`` (a read replica's), else on DATABASE_URL."""
    # UTC sessions: times that PostgreSQL renders itself (JSON documents) read like Python's.
    options = {
        "min_size": settings.db_pool_min,
        "max_size": settings.db_pool_max,
        "init": init_connection,
        "server_settings": {"timezone": "UTC"},
    }
    return await asyncpg.create_pool(url or settings.database_url, **{**options, **kwargs})
