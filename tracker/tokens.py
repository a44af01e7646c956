"""API tokens: issued, listed and revoked by `tracker tokens`, checked by the API (tracker/api/auth.py).

A token is ``trk_`` and 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). It
is shown once, at creation; the database keeps its SHA-256 digest and its first characters.
Scopes: ``read`` (every trace and event route), ``write`` (publishing over HTTP), ``admin``
(everything, including the platform-wide rollups and the dead letters).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from tracker.db import Connection
from tracker.tenants import Tenants

SCOPES = ("read", "write", "admin")
PREFIX = "trk_"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class TokenInfo:
    id: int | str  # an api_tokens id, or "oidc:<issuer>:<subject>"
    name: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked: bool
    tenants: Tenants | None = None  # None: not bound, every trace

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


async def create_token(
    conn: Connection,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    tenants: Tenants | None = None,
) -> tuple[int, str]:
    """(id, token): the token itself exists only in this return value. ``tenants``: bind the
    token to them (it then sees only their traces); an admin token cannot be bound."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    if tenants is not None and tenants.bound and "admin" in scopes:
        raise ValueError(
            "an admin token reads the whole platform (rollups, dead letters); it cannot be bound to tenants"
        )
    token = PREFIX + secrets.token_urlsafe(32)
    token_id = await _insert(conn, name, token, scopes, expires_at, tenants)
    assert token_id is not None  # a fresh 256-bit token has no stored twin
    return token_id, token


async def _insert(
    conn: Connection,
    name: str,
    token: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    tenants: Tenants | None = None,
) -> int | None:
    """Store a token's digest; its id, or None when that digest is stored already."""
    return await conn.fetchval(
        "INSERT INTO api_tokens (name, digest, prefix, scopes, expires_at, tenants) "
        "VALUES ($1, $2, $3, $4, $5, $6::text::jsonb) ON CONFLICT (digest) DO NOTHING RETURNING id",
        name,
        digest(token),
        token[: len(PREFIX) + 6],
        sorted(set(scopes)),
        expires_at,
        json.dumps(tenants.to_json() if tenants is not None else {}),
    )


async def ensure_admin_token(conn: Connection, token: str, name: str) -> bool:
    """Store ``token``, made by the operator (TRACKER_ADMIN_TOKEN) or by `tracker up`, as an admin
    token unless it is stored already; True when it was stored now. A revoked one stays revoked."""
    if not token.startswith(PREFIX) or len(token) < len(PREFIX) + 32:
        raise ValueError(
            f"an admin token must be {PREFIX!r} and at least 32 more characters, e.g. "
            f"{PREFIX}$(openssl rand -hex 24); got one of {len(token)} characters"
        )
    return await _insert(conn, name, token, ["admin"]) is not None


async def usable(conn: Connection, token: str) -> bool:
    """Whether the API would take this token now (known, not revoked, not expired)."""
    info = await find_token(conn, digest(token))
    return info is not None and not info.revoked and not info.expired


async def list_tokens(conn: Connection) -> list[dict]:
    rows = await conn.fetch(
        "SELECT id, name, prefix, scopes, tenants::text AS tenants, created_at, expires_at, revoked_at, last_used_at "
        "FROM api_tokens ORDER BY id"
    )
    return [{**r, "tenants": json.loads(r["tenants"])} for r in rows]


async def revoke_token(conn: Connection, token_id: int) -> bool:
    """True when a token that was not revoked yet is revoked now."""
    status = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id
    )
    return status == "UPDATE 1"


async def find_token(conn: Connection, token_digest: bytes) -> TokenInfo | None:
    """The record of the token with this digest (None: no such token); marks its use."""
    row = await conn.fetchrow(
        "UPDATE api_tokens SET last_used_at = now() WHERE digest = $1 "
        "RETURNING id, name, scopes, expires_at, revoked_at IS NOT NULL AS revoked, tenants::text AS tenants",
        token_digest,
    )
    if row is None:
        return None
    return TokenInfo(
        row["id"],
        row["name"],
        frozenset(row["scopes"]),
        row["expires_at"],
        row["revoked"],
        Tenants.from_json(json.loads(row["tenants"])),
    )
