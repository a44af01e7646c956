"""Bearer tokens on every route the spec does not open (TRACKER_AUTH=on).

Connexion's own security layer is left out of the stack (tracker/api/app.py); this middleware
takes its place, after routing and before request validation, so that a caller without a
valid token learns nothing from validation errors. What an operation needs comes from the
spec: ``security: []`` opens it, ``x-scope`` names the scope it needs (``read`` when absent).

A token's record is cached for TRACKER_AUTH_CACHE_SECONDS (a lookup by digest on the primary,
which also marks its last use): a revocation or an expiry takes effect within that time in
every API process. Unknown tokens are cached too, in a bounded map, so that a flood of made-up
tokens costs the database at most one lookup per token per period.
"""

from __future__ import annotations

import logging
import time

from connexion.exceptions import ProblemException
from starlette.requests import cookie_parser

from tracker.api.limits import TokenLimits, retry_after
from tracker.api.oidc import InvalidToken, OidcVerifier, looks_like_jwt
from tracker.api.routing import operation_id
from tracker.tokens import TokenInfo, digest, find_token

log = logging.getLogger("tracker.api.auth")

_MAX_CACHED = 10_000
COOKIE = "tracker_token"  # the web pages' sign-in cookie (tracker/web/pages.py sets it)


def required_scopes(spec: dict) -> dict[str, str | None]:
    """operationId -> the scope it needs, or None when the spec opens it."""
    default_open = spec.get("security") == []
    out: dict[str, str | None] = {}
    for item in spec["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            security = operation.get("security")
            is_open = security == [] if security is not None else default_open
            out[operation["operationId"]] = None if is_open else operation.get("x-scope", "read")
    return out


def _unauthorized(detail: str, error: str | None = None) -> ProblemException:
    challenge = 'Bearer realm="tracker"' + (f', error="{error}"' if error else "")
    return ProblemException(status=401, title="Unauthorized", detail=detail, headers={"WWW-Authenticate": challenge})


def _too_many(detail: str, seconds: float) -> ProblemException:
    return ProblemException(
        status=429, title="Too Many Requests", detail=detail, headers={"Retry-After": retry_after(seconds)}
    )


class Authenticator:
    """Who a token is, and whether it may do what it asks: the API's middleware (a bearer
    header) and the web pages (tracker/web: a cookie) ask the same object, so both see one cache
    and count refusals in the same metric.

    A token's record is cached for TRACKER_AUTH_CACHE_SECONDS, keyed by the token's digest, not
    the token: no secret is compared byte by byte in this process (the database compares digests
    too)."""

    def __init__(self, cache_seconds: float, metrics, oidc: OidcVerifier | None = None) -> None:
        self.cache_seconds = cache_seconds
        self.metrics = metrics
        self.oidc = oidc
        self._cache: dict[bytes, tuple[TokenInfo | None, float]] = {}

    async def identify(self, pool, token: str, needed: str) -> TokenInfo:
        """The token's identity if it may use a route needing ``needed``; else ProblemException
        401 (unknown, revoked, expired) or 403 (scope)."""
        info: TokenInfo | None
        if self.oidc is not None and looks_like_jwt(token):
            info = await self._verify_jwt(token)
        else:
            info = await self._lookup(pool, token)
        # The same answer for an unknown, a revoked and an expired token: which of them it is
        # is for the token's owner to find in `tracker tokens list`, not for whoever holds it.
        if info is None or info.revoked or info.expired:
            reason = "unknown" if info is None else "revoked" if info.revoked else "expired"
            self.refused(reason)
            raise _unauthorized("The bearer token is unknown, revoked or expired.", error="invalid_token")
        if not info.allows(needed):
            self.refused("scope")
            raise ProblemException(
                status=403,
                title="Forbidden",
                detail=f"This route needs a token with the {needed!r} scope; this token has "
                f"{', '.join(sorted(info.scopes))}.",
            )
        return info

    async def _lookup(self, pool, token: str) -> TokenInfo | None:
        now = time.monotonic()
        key = digest(token)
        cached = self._cache.get(key)
        if cached is not None and now - cached[1] < self.cache_seconds:
            return cached[0]
        async with pool.acquire() as conn:
            info = await find_token(conn, key)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (info, now)
        return info

    async def _verify_jwt(self, token: str) -> TokenInfo:
        """The identity a JWT vouches for, cached by digest like a token's record; a cached one
        past its ``exp`` is refused by the expiry check like an expired token."""
        now = time.monotonic()
        key = digest(token)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is not None and now - cached[1] < self.cache_seconds:
            return cached[0]
        assert self.oidc is not None
        try:
            info = await self.oidc.verify(token)
        except InvalidToken as exc:
            log.info("bearer JWT refused: %s", exc)  # the reason, never the token
            self.refused("expired" if exc.expired else "unknown")
            raise _unauthorized("The bearer token is unknown, revoked or expired.", error="invalid_token") from None
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (info, now)
        return info

    def refused(self, reason: str) -> None:
        # Bounded label values; never the token, nor its name.
        self.metrics.auth_refused.labels(reason).inc()


class AuthMiddleware:
    def __init__(self, app, spec: dict, authenticator: Authenticator, limits: TokenLimits) -> None:
        self.app = app
        self.scopes = required_scopes(spec)
        self.authenticator = authenticator
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            routed = operation_id(scope)
            needed = self.scopes.get(routed) if routed else None
            if needed is not None:
                info = await self._check(scope, needed)
                # What the handlers filter by (tracker/api/tenancy.py); the state is the request's own copy.
                scope["state"]["tenants"] = info.tenants
                await limited(self.limits, self.authenticator, info, self.app, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _check(self, scope, needed: str) -> TokenInfo:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None and scope["method"] in ("GET", "HEAD"):
            # The web pages' sign-in cookie (tracker/web), so that their links to the JSON, Status
            # API and Payload Tracker views open in the same browser. Reads only: the cookie is
            # SameSite=Strict, and a write still needs the header, which no other site can set.
            cookie = next((v for k, v in scope["headers"] if k == b"cookie"), None)
            token = cookie_parser(cookie.decode("latin-1")).get(COOKIE) if cookie else None
            if token:
                return await self.authenticator.identify(scope["state"]["pool"], token, needed)
        if header is None:
            self.authenticator.refused("missing")
            raise _unauthorized("This route needs a bearer token: send 'Authorization: Bearer <token>'.")
        kind, _, token = header.decode("latin-1").partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            self.authenticator.refused("malformed")
            raise _unauthorized("The Authorization header must be 'Bearer <token>'.", error="invalid_request")
        return await self.authenticator.identify(scope["state"]["pool"], token, needed)


async def limited(limits: TokenLimits, authenticator: Authenticator, info: TokenInfo, app, scope, receive, send):
    """Run ``app`` for this request within the token's rate and concurrency limits (429 when over)."""
    wait = limits.take(info.id)
    if wait is not None:
        authenticator.refused("rate")
        raise _too_many(
            f"This token is over its rate of {limits.rate:g} requests per second "
            f"(bursts of {limits.burst:g}); retry after the time in Retry-After.",
            wait,
        )
    if not limits.enter(info.id):
        authenticator.refused("concurrency")
        raise _too_many(
            f"This token already has {limits.concurrency} requests in progress, its limit; wait for one to finish.",
            1,
        )
    try:
        await app(scope, receive, send)
    finally:
        limits.leave(info.id)
