"""Reads from PostgreSQL streaming replicas (DATABASE_READ_URLS), the primary when none can serve.

Every ``TRACKER_REPLICA_CHECK_SECONDS`` a monitor asks each replica how far it has replayed
and compares with the primary's WAL position: a replica that does not answer, is not a
standby, or lags more than ``TRACKER_REPLICA_MAX_LAG`` seconds is skipped until a later check
finds it well again. Between checks, a replica that refuses a connection is skipped at once
and the request is served by the primary, so stopping a replica costs no request an error.

An answer read from a replica says how old it may be: ``Tracker-Replica-Replay-Time`` is an
instant before which every change committed on the primary is in the answer (the primary's
time of the check that found the replica caught up, else the commit time of the last
transaction the replica had replayed). A page that polls can tell an older answer from a
newer one by it, where a trace would otherwise seem to go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tracker.db import Connection, create_pool, keep_session
from tracker.settings import Settings

log = logging.getLogger("tracker.api.replicas")

REPLAY_TIME_HEADER = "tracker-replica-replay-time"

# Why a replica cannot be read: the network, the server refusing (starting up, shutting down,
# too many clients), or the pool timing out on a replica that hangs.
_UNREACHABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

# Set per request by ReplicaHeaderMiddleware: the replica a handler read from, if any.
_read_from: ContextVar[dict] = ContextVar("tracker_read_from")


def replica_name(url: str) -> str:
    """host:port of a URL: what logs, metrics and /readyz call a replica (never a password)."""
    match = re.match(r"^[a-z]+://(?:[^@/]*@)?([^/?]+)", url)
    return match.group(1) if match else "replica"


@dataclass
class Replica:
    url: str
    name: str
    pool: asyncpg.Pool | None = None
    in_use: bool = False
    lag_seconds: float | None = None
    replay_time: datetime | None = None
    reason: str = "not checked yet"

    def skip(self, reason: str) -> None:
        if self.in_use:
            log.warning("replica %s skipped: %s", self.name, reason)
        self.in_use = False
        self.reason = reason

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "in_use": self.in_use,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "replay_time": None if self.replay_time is None else self.replay_time.isoformat(),
            "reason": None if self.in_use else self.reason,
        }


# $1: the primary's WAL position just before (text, or NULL when the primary did not answer).
CHECK_REPLICA = """
SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn() >= $1::text::pg_lsn AS caught_up,
       pg_last_xact_replay_timestamp() AS replay_time, now() AS now
"""


class Reads:
    """Where the API reads when replicas are configured: ``acquire()`` gives a connection to a
    replica in use (in turn), else to the primary."""

    def __init__(self, settings: Settings, primary: asyncpg.Pool, metrics=None) -> None:
        self.settings = settings
        self.primary = primary
        self.metrics = metrics
        self.replicas = [Replica(url, replica_name(url)) for url in settings.read_urls]
        self._next = 0
        self._monitor: asyncio.Task | None = None

    async def start(self) -> Reads:
        for replica in self.replicas:
            # min_size 0: a replica that is down does not stop the API from starting.
            replica.pool = await create_pool(self.settings, url=replica.url, min_size=0, reset=keep_session)
        await self.check()
        self._monitor = asyncio.create_task(self._watch())
        return self

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for replica in self.replicas:
            if replica.pool is not None:
                await replica.pool.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.replica_check_seconds)
            try:
                await self.check()
            except Exception:  # the monitor must outlive any one bad round
                log.exception("replica check failed")

    async def check(self) -> None:
        """One round: the primary's WAL position, then each replica's replay position."""
        timeout = max(1.0, self.settings.replica_check_seconds)
        try:
            async with self.primary.acquire(timeout=timeout) as conn:
                position = await conn.fetchrow("SELECT pg_current_wal_lsn()::text, now()", timeout=timeout)
            assert position is not None  # one row, always
            primary_lsn, primary_now = position
        except _UNREACHABLE:
            primary_lsn = primary_now = None  # the lag is then judged by replay time alone
        await asyncio.gather(*(self._check(r, primary_lsn, primary_now, timeout) for r in self.replicas))

    async def _check(self, replica: Replica, primary_lsn, primary_now, timeout: float) -> None:
        assert replica.pool is not None
        try:
            async with replica.pool.acquire(timeout=timeout) as conn:
                row = await conn.fetchrow(CHECK_REPLICA, primary_lsn, timeout=timeout)
            assert row is not None  # one row, always
        except _UNREACHABLE as exc:
            replica.lag_seconds = replica.replay_time = None
            replica.skip(f"does not answer: {type(exc).__name__}: {exc}")
            self._observe(replica)
            return
        if not row["standby"]:
            replica.lag_seconds = replica.replay_time = None
            replica.skip("is not a standby (promoted, or a primary named as a replica)")
        else:
            if row["caught_up"]:
                # Caught up with the primary as it was at primary_now.
                replica.lag_seconds, replica.replay_time = 0.0, primary_now
            elif row["replay_time"] is None:
                replica.lag_seconds, replica.replay_time = None, None
            else:
                replica.lag_seconds = max(0.0, (row["now"] - row["replay_time"]).total_seconds())
                replica.replay_time = row["replay_time"]
            max_lag = self.settings.replica_max_lag_seconds
            if replica.lag_seconds is None:
                replica.skip("has replayed nothing yet")
            elif replica.lag_seconds > max_lag:
                replica.skip(f"lags {replica.lag_seconds:.1f} s, over TRACKER_REPLICA_MAX_LAG={max_lag:g}")
            else:
                if not replica.in_use:
                    log.info("replica %s in use (lag %.3f s)", replica.name, replica.lag_seconds)
                replica.in_use, replica.reason = True, ""
        self._observe(replica)

    def _observe(self, replica: Replica) -> None:
        if self.metrics is not None:
            self.metrics.observe_replica(replica.name, replica.lag_seconds, replica.in_use)

    def _pick(self) -> Replica | None:
        n = len(self.replicas)
        for i in range(n):
            replica = self.replicas[(self._next + i) % n]
            if replica.in_use:
                self._next = (self._next + i + 1) % n
                return replica
        return None

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        replica = self._pick()
        if replica is not None:
            assert replica.pool is not None
            try:
                conn = await replica.pool.acquire(timeout=self.settings.replica_check_seconds + 1)
            except _UNREACHABLE as exc:
                # Down since the last check: skip it now rather than at the next check.
                replica.skip(f"refused a connection: {type(exc).__name__}: {exc}")
                self._observe(replica)
            else:
                try:
                    holder = _read_from.get(None)
                    if holder is not None:
                        holder["replica"] = replica
                    yield conn
                finally:
                    await replica.pool.release(conn)
                return
        async with self.primary.acquire() as conn:
            yield conn

    def status(self) -> list[dict]:
        return [r.as_json() for r in self.replicas]


class ReplicaHeaderMiddleware:
    """Adds Tracker-Replica-Replay-Time to an answer read from a replica (module docstring)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # A dict, not the replica itself: a handler that runs in a copy of this context still
        # writes into the same dict.
        holder: dict = {}
        token = _read_from.set(holder)

        async def send_wrapper(message):
            replica = holder.get("replica")
            if message["type"] == "http.response.start" and replica is not None and replica.replay_time:
                headers = list(message.get("headers", []))
                headers.append((REPLAY_TIME_HEADER.encode(), replica.replay_time.isoformat().encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _read_from.reset(token)
