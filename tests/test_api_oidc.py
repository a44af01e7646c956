"""OIDC (TRACKER_OIDC_ISSUER): JWTs signed with keys the test generates, their keys read from a
JWKS file or fetched from the issuer's discovery document over HTTP, claims mapped to scopes
and tenants."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from consumer.store import prepare_connection, write_batch
from tests.helpers.api import api_client
from tests.helpers.factories import events_of, payload_tracker
from tracker.db import init_connection

ISSUER = "https://idp.example.test/realms/tracker"
AUDIENCE = "tracker-api"


def jwk_of(private_key, kid: str) -> dict:
    public = private_key.public_key()
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(public)), "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "stranger": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def token(keys, key: str = "rsa", kid: str | None = None, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    algorithm = "ES256" if key == "ec" else "RS256"
    return jwt.encode(body, keys[key], algorithm=algorithm, headers={"kid": kid or key})


@pytest.fixture
def jwks_file(tmp_path, keys):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk_of(keys["rsa"], "rsa"), jwk_of(keys["ec"], "ec")]}))
    return path


@pytest.fixture
async def seeded(db):
    await init_connection(db)
    await prepare_connection(db)
    at = datetime.now(UTC) - timedelta(minutes=1)
    await write_batch(
        db,
        events_of(
            [
                payload_tracker("oidc-a", "ingress", "received", at, account="acct-a"),
                payload_tracker("oidc-b", "ingress", "received", at, account="acct-b"),
            ]
        ),
    )


def oidc_settings(settings, **extra):
    return dataclasses.replace(
        settings,
        auth="on",
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_tenant_claims="account=accounts",
        **extra,
    )


async def test_a_jwt_of_the_issuer_is_accepted_with_the_scopes_and_tenants_of_its_claims(
    settings, seeded, keys, jwks_file
):
    cases = {
        "read, RS256": (token(keys, scope="openid tracker:read"), {"oidc-a": 200, "oidc-b": 200, "stats": 403}),
        "admin, ES256": (token(keys, "ec", scope="tracker:admin"), {"oidc-a": 200, "oidc-b": 200, "stats": 200}),
        "scope as a list": (token(keys, scope=["tracker:read"]), {"oidc-a": 200, "stats": 403}),
        "bound to acct-a": (
            token(keys, scope="tracker:read tracker:admin", accounts=["acct-a"]),
            # bound: the other tenant's trace is unknown, and admin is dropped
            {"oidc-a": 200, "oidc-b": 404, "stats": 403},
        ),
        "no tracker scope": (token(keys, scope="openid profile"), {"oidc-a": 403}),
        "another audience": (token(keys, aud="someone-else", scope="tracker:read"), {"oidc-a": 401}),
        "another issuer": (token(keys, iss="https://evil.test", scope="tracker:read"), {"oidc-a": 401}),
        "expired": (token(keys, exp=int(time.time()) - 120, scope="tracker:read"), {"oidc-a": 401}),
        "no exp": (token(keys, exp=None, scope="tracker:read"), {"oidc-a": 401}),
        "signed by another key": (token(keys, "stranger", kid="rsa", scope="tracker:read"), {"oidc-a": 401}),
        "unknown key id": (token(keys, "stranger", scope="tracker:read"), {"oidc-a": 401}),
        "HS256 with the public key as secret": (
            jwt.encode(
                {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60, "scope": "tracker:admin"},
                "secret",
                algorithm="HS256",
                headers={"kid": "rsa"},
            ),
            {"oidc-a": 401},
        ),
    }
    urls = {"oidc-a": "/v1/traces/oidc-a", "oidc-b": "/v1/traces/oidc-b", "stats": "/v1/stats/counts"}
    got = {}
    with api_client(oidc_settings(settings, oidc_jwks_file=str(jwks_file))) as client:
        for name, (jwt_token, expected) in cases.items():
            for target in expected:
                answer = client.get(urls[target], headers={"Authorization": f"Bearer {jwt_token}"})
                got[(name, target)] = answer.status_code
                if answer.status_code == 401:
                    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="tracker"')
        metrics = client.get("/metrics").text
    assert got == {(name, target): code for name, (_, expected) in cases.items() for target, code in expected.items()}
    assert 'tracker_api_auth_refused_total{reason="expired"} 1.0' in metrics
    for jwt_token, _ in cases.values():
        assert jwt_token not in metrics


@contextlib.contextmanager
def issuer_server(jwks: dict) -> Iterator[tuple[str, list[str]]]:
    """An HTTP issuer on loopback: its discovery document and its JWKS; yields its URL and the
    paths asked for (to see what was fetched, and how often)."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            base = f"http://{self.headers['Host']}"
            documents = {"/.well-known/openid-configuration": {"issuer": base, "jwks_uri": f"{base}/keys"}}
            documents["/keys"] = jwks
            body = json.dumps(documents[self.path]).encode() if self.path in documents else None
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        server.shutdown()


async def test_the_issuers_keys_are_discovered_fetched_once_and_fetched_again_for_a_new_key(
    settings, seeded, keys, monkeypatch
):
    monkeypatch.setattr("tracker.api.oidc.REFETCH_COOLDOWN_SECONDS", 0.5)
    jwks = {"keys": [jwk_of(keys["rsa"], "rsa")]}
    with issuer_server(jwks) as (issuer, asked):
        configured = dataclasses.replace(oidc_settings(settings), oidc_issuer=issuer)

        def bearer(key: str) -> dict:
            return {"Authorization": f"Bearer {token(keys, key, iss=issuer, scope='tracker:read')}"}

        with api_client(configured) as client:
            for _ in range(3):
                assert client.get("/v1/traces/oidc-a", headers=bearer("rsa")).status_code == 200
            assert asked == ["/.well-known/openid-configuration", "/keys"]
            # The issuer rotates in a new key: a token signed with it makes the API fetch again
            # (once the cool-down after the last fetch is over).
            jwks["keys"].append(jwk_of(keys["ec"], "ec"))
            time.sleep(0.6)
            assert client.get("/v1/traces/oidc-a", headers=bearer("ec")).status_code == 200
            assert asked[2:] == ["/keys"]
            # A key the issuer does not have: refused, not an error.
            assert client.get("/v1/traces/oidc-a", headers=bearer("stranger")).status_code == 401


def test_oidc_settings_are_checked_when_the_api_starts(settings, tmp_path):
    from tracker.api.__main__ import main

    bad = {
        "no audience": {"TRACKER_OIDC_AUDIENCE": ""},
        "auth off": {"TRACKER_AUTH": "off"},
        "missing key file": {"TRACKER_OIDC_JWKS_FILE": str(tmp_path / "none.json")},
        "bad tenant mapping": {"TRACKER_OIDC_TENANT_CLAIMS": "tenant=claim"},
    }
    base = {
        **oidc_settings(settings).as_environ(),
        "TRACKER_OIDC_ISSUER": ISSUER,
        "TRACKER_OIDC_AUDIENCE": AUDIENCE,
    }
    for name, change in bad.items():
        with pytest.MonkeyPatch.context() as patch:
            for var, value in {**base, **change}.items():
                patch.setenv(var, value)
            assert main([]) == 2, name
