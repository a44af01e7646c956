"""Least privilege in PostgreSQL: what the API's role may do (`tracker grant-reader ROLE`).

The consumer runs as the role that owns the schema (the one `tracker migrate` runs as): it
creates each day's partition and drops expired ones, and PostgreSQL lets only a table's owner
attach or detach partitions. The API needs far less, and gets only that: to read every table
(through the partitioned `events`, whose privileges are the ones PostgreSQL checks for its
partitions) and to mark a token's last use. It cannot insert, update or delete events, trace
state, rollups or dead letters, nor create or revoke tokens.
"""

from __future__ import annotations

import re

from tracker.db import Connection

# Identifiers cannot be query parameters; a role name is checked against this instead.
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _role(name: str) -> str:
    if not _ROLE.match(name):
        raise ValueError(f"a role name is lower-case letters, digits and _ (at most 63), got {name!r}")
    return f'"{name}"'


async def grant_reader(conn: Connection, role: str) -> None:
    """Grant ``role`` (an existing login role) what the API needs on this database, and no more."""
    r = _role(role)
    if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        raise ValueError(f"role {role!r} does not exist: CREATE ROLE {role} LOGIN PASSWORD '...' first")
    database = await conn.fetchval("SELECT current_database()")
    async with conn.transaction():
        await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {r}')
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {r}")
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {r}")
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r}")
        # Tables made later by the owner (a migration): readable too. Daily partitions need
        # nothing: a query through `events` is checked against `events` alone.
        await conn.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {r}")
        # A token's last use, and only that column.
        await conn.execute(f"GRANT UPDATE (last_used_at) ON api_tokens TO {r}")
