"""OIDC: JWTs signed by an identity provider, accepted beside the API's own tokens.

Set TRACKER_OIDC_ISSUER and TRACKER_OIDC_AUDIENCE, and the API (TRACKER_AUTH=on) takes a
bearer JWT whose signature verifies with one of the issuer's keys and whose ``iss``, ``aud``,
``exp`` (and ``nbf`` when present) hold, 30 s of clock skew allowed. The keys come from
TRACKER_OIDC_JWKS_FILE (a JWKS document, e.g. mounted from a secret), else from
TRACKER_OIDC_JWKS_URL, else from the ``jwks_uri`` of the issuer's discovery document
(``<issuer>/.well-known/openid-configuration``); fetched keys are cached and fetched again
when a token names a key id not seen yet (a key rotation).

Claims to scopes and tenants (README: "OIDC"):
- scopes: the claim TRACKER_OIDC_SCOPE_CLAIM (``scope``), a space-separated string or a list;
  the values that start with TRACKER_OIDC_SCOPE_PREFIX (``tracker:``) name our scopes
  (``tracker:read`` -> read). Others are ignored.
- tenants: TRACKER_OIDC_TENANT_CLAIMS, ``field=claim`` pairs separated by commas (e.g.
  ``account=rh_account,org_id=rh_org_id``); each claim a string or a list of strings.
  An identity with any tenant is bound and never admin (as a bound token cannot be).

PyJWT does the cryptography and the claim checks; only the mapping is ours. Its JWKS client
fetches with urllib, which blocks, so fetches run in a thread.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import jwt

from tracker.settings import Settings, SettingsError
from tracker.tenants import FIELDS, Tenants
from tracker.tokens import SCOPES, TokenInfo

# Asymmetric only: a shared-secret (HS*) or unsigned ("none") token is never accepted.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_SECONDS = 30
# A token naming a key id not in the cached set fetches the set again, at most once per this
# many seconds (PyJWT's default): made-up key ids cannot make us hammer the issuer.
REFETCH_COOLDOWN_SECONDS = 30.0


class InvalidToken(Exception):
    """The JWT is not acceptable; ``expired`` tells the two kinds of 401 apart in the metrics."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def tenant_claims(setting: str) -> dict[str, str]:
    """TRACKER_OIDC_TENANT_CLAIMS as {tenant field: claim name}."""
    out = {}
    for pair in filter(None, (p.strip() for p in setting.split(","))):
        field, _, claim = pair.partition("=")
        if field.strip() not in FIELDS or not claim.strip():
            raise SettingsError(
                f"TRACKER_OIDC_TENANT_CLAIMS: {pair!r} is not field=claim with field one of {', '.join(FIELDS)}"
            )
        out[field.strip()] = claim.strip()
    return out


class OidcVerifier:
    def __init__(self, settings: Settings) -> None:
        if not settings.oidc_audience:
            raise SettingsError("TRACKER_OIDC_AUDIENCE must be set with TRACKER_OIDC_ISSUER")
        self.issuer = settings.oidc_issuer or ""
        self.audience = settings.oidc_audience
        self.scope_claim = settings.oidc_scope_claim
        self.scope_prefix = settings.oidc_scope_prefix
        self.tenant_claims = tenant_claims(settings.oidc_tenant_claims)
        self._file_keys: jwt.PyJWKSet | None = None
        self._client: jwt.PyJWKClient | None = None
        self._jwks_url = settings.oidc_jwks_url
        if settings.oidc_jwks_file:
            try:
                self._file_keys = jwt.PyJWKSet.from_json(Path(settings.oidc_jwks_file).read_text())
            except (OSError, jwt.PyJWKSetError, ValueError) as exc:
                raise SettingsError(f"TRACKER_OIDC_JWKS_FILE: {exc}") from None

    async def verify(self, token: str) -> TokenInfo:
        try:
            key = await self._signing_key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired", expired=True) from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidToken(str(exc)) from None
        return self.identity(claims)

    def identity(self, claims: dict) -> TokenInfo:
        scopes = self._scopes(claims.get(self.scope_claim))
        values = {field: self._strings(claims.get(claim)) for field, claim in self.tenant_claims.items()}
        tenants = Tenants.from_json(values)
        if tenants is not None:
            scopes.discard("admin")
        return TokenInfo(
            id=f"oidc:{claims['iss']}:{claims['sub']}",
            name=f"oidc {claims['sub']}",
            scopes=frozenset(scopes),
            # The skew allowed at the check, allowed on the cached identity too.
            expires_at=datetime.fromtimestamp(claims["exp"] + LEEWAY_SECONDS, UTC),
            revoked=False,
            tenants=tenants,
        )

    def _scopes(self, value) -> set[str]:
        names = value.split() if isinstance(value, str) else self._strings(value)
        prefix = self.scope_prefix
        return {n[len(prefix) :] for n in names if n.startswith(prefix) and n[len(prefix) :] in SCOPES}

    @staticmethod
    def _strings(value) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return ()

    async def _signing_key(self, token: str):
        if self._file_keys is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            keys = [k for k in self._file_keys.keys if kid is None or k.key_id == kid]
            if not keys:
                raise InvalidToken(f"no key {kid!r} in TRACKER_OIDC_JWKS_FILE")
            return keys[0].key
        if self._client is None:
            url = self._jwks_url
            if not url:
                url = await asyncio.to_thread(self._discover)
            self._client = jwt.PyJWKClient(
                url, cache_keys=True, lifespan=300, timeout=10, cooldown_duration=REFETCH_COOLDOWN_SECONDS
            )
        try:
            signing = await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise InvalidToken(f"the issuer's keys could not be fetched: {exc}") from None
        return signing.key

    def _discover(self) -> str:  # in a thread: urllib blocks
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())["jwks_uri"]
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidToken(f"the issuer's discovery document ({url}) gave no jwks_uri: {exc}") from None
