"""Bearer tokens (TRACKER_AUTH=on): every route of the spec against every kind of credential,
the `tracker tokens` command, and no token in a log line or a metric."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.helpers.api import api_client
from tracker.cli import main as cli
from tracker.settings import Settings
from tracker.spec import spec
from tracker.tokens import create_token, revoke_token

OPEN = {"tracker.api.health.healthz", "tracker.api.health.readyz", "tracker.api.health.metrics"}
WRITE = {"tracker.api.traces.post_trace", "tracker.api.events.post_event"}
ADMIN = {
    "tracker.api.deadletters.list_dead_letters",
    "tracker.api.stats.services",
    "tracker.api.stats.counts",
    "tracker.api.stats.elapsed",
    "tracker.api.stats.success_rate",
}


def operations() -> list[tuple[str, str, str]]:
    """(operationId, method, a URL for it): every operation of the spec, its path parameters
    filled and its required query parameters given."""
    out = []
    for template, item in spec()["paths"].items():
        for method, operation in item.items():
            path = template
            query = []
            for parameter in operation.get("parameters", []):
                if "$ref" in parameter:
                    continue  # shared parameters: none of them is required
                if parameter["in"] == "path":
                    path = path.replace("{" + parameter["name"] + "}", "some-id")
                elif parameter.get("required"):
                    query.append(f"{parameter['name']}=some-value")
            out.append((operation["operationId"], method, path + ("?" + "&".join(query) if query else "")))
    return out


def needed(operation_id: str) -> str | None:
    return (
        None
        if operation_id in OPEN
        else "write"
        if operation_id in WRITE
        else "admin"
        if operation_id in ADMIN
        else "read"
    )


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    # No cache: a revocation shows at once (it is bounded by TRACKER_AUTH_CACHE_SECONDS otherwise).
    return dataclasses.replace(settings, auth="on", auth_cache_seconds=0)


@pytest.fixture
async def tokens(db) -> dict[str, str]:
    made = {}
    for scope in ("read", "write", "admin"):
        _, made[scope] = await create_token(db, f"test {scope}", [scope])
    _, made["expired"] = await create_token(db, "expired", ["admin"], datetime.now(UTC) - timedelta(seconds=1))
    revoked_id, made["revoked"] = await create_token(db, "revoked", ["admin"])
    assert await revoke_token(db, revoked_id)
    made["unknown"] = "trk_" + "x" * 43
    return made


def test_the_matrix_covers_every_operation_of_the_spec():
    ids = {operation_id for operation_id, _, _ in operations()}
    assert OPEN | WRITE | ADMIN <= ids and len(ids) == 20
    declared = {op["operationId"]: op.get("x-scope") for item in spec()["paths"].values() for op in item.values()}
    assert {i for i, s in declared.items() if s == "write"} == WRITE
    assert {i for i, s in declared.items() if s == "admin"} == ADMIN


async def test_every_route_answers_each_kind_of_credential_as_its_scope_says(auth_settings, tokens):
    kinds = {
        "none": None,
        "malformed": "Basic dXNlcjpwYXNz",
        "empty bearer": "Bearer ",
        "unknown": f"Bearer {tokens['unknown']}",
        "expired": f"Bearer {tokens['expired']}",
        "revoked": f"Bearer {tokens['revoked']}",
        "read": f"Bearer {tokens['read']}",
        "write": f"Bearer {tokens['write']}",
        "admin": f"Bearer {tokens['admin']}",
    }
    wrong = []
    with api_client(auth_settings) as client:
        for operation_id, method, url in operations():
            scope = needed(operation_id)
            for kind, header in kinds.items():
                headers = {"Authorization": header} if header else {}
                body: dict | None = {} if method == "post" else None
                answer = client.request(method.upper(), url, headers=headers, json=body)
                if scope is None:
                    expected: str | int = "not refused"
                elif kind in ("read", "write", "admin"):
                    expected = "not refused" if kind in (scope, "admin") else 403
                else:
                    expected = 401
                got = answer.status_code
                ok = got not in (401, 403) and got < 500 if expected == "not refused" else got == expected
                if expected == 401:
                    ok = ok and answer.headers.get("WWW-Authenticate", "").startswith('Bearer realm="tracker"')
                if expected in (401, 403):
                    ok = ok and answer.headers["Content-Type"] == "application/problem+json"
                    ok = ok and "some-id" not in answer.text  # a refusal says nothing about the data
                if not ok:
                    wrong.append((operation_id, kind, expected, got, answer.text[:200]))
    assert wrong == []


async def test_a_revoked_token_is_refused_from_then_on(auth_settings, db):
    token_id, token = await create_token(db, "soon revoked", ["read"])
    with api_client(auth_settings) as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/traces/unknown-trace", headers=headers).status_code == 404
        await revoke_token(db, token_id)
        assert client.get("/v1/traces/unknown-trace", headers=headers).status_code == 401
    assert await db.fetchval("SELECT last_used_at IS NOT NULL FROM api_tokens WHERE id = $1", token_id)


async def test_no_token_reaches_a_log_line_or_a_metric(auth_settings, tokens, caplog):
    caplog.set_level(logging.DEBUG)
    with api_client(auth_settings) as client:
        for token in tokens.values():
            client.get("/v1/traces/some-id", headers={"Authorization": f"Bearer {token}"})
            client.get("/v1/stats/counts", headers={"Authorization": f"Bearer {token}"})
        metrics = client.get("/metrics").text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    # read on the rollups, write on the trace and on the rollups
    assert 'tracker_api_auth_refused_total{reason="scope"} 3.0' in metrics
    for token in tokens.values():
        assert token not in logged and token not in metrics


def test_tokens_are_created_listed_and_revoked_from_the_command_line(database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert cli(["tokens", "create", "--name", "ci", "--scope", "read", "--scope", "write", "--expires-in", "30d"]) == 0
    created = capsys.readouterr().out
    token = created.rsplit(" ", 1)[1].strip()
    assert token.startswith("trk_") and len(token) == 47
    assert cli(["tokens", "list"]) == 0
    listed = capsys.readouterr().out
    assert '"name": "ci"' in listed and token[:10] in listed and token not in listed
    assert cli(["tokens", "revoke", "1"]) == 0
    assert cli(["tokens", "revoke", "1"]) == 1  # already revoked
    assert cli(["tokens", "create", "--name", "x", "--scope", "read", "--expires-in", "soon"]) == 2


def test_an_auth_setting_other_than_on_or_off_is_refused(settings):
    from tracker.settings import SettingsError

    with pytest.raises(SettingsError, match="TRACKER_AUTH must be on or off"):
        assert dataclasses.replace(settings, auth="yes").auth_enabled


async def test_a_token_over_its_rate_is_answered_429_with_retry_after_and_others_are_not(auth_settings, db):
    limited = dataclasses.replace(auth_settings, rate_limit=0.5, rate_burst=3)
    _, busy = await create_token(db, "busy", ["read"])
    _, other = await create_token(db, "other", ["read"])
    with api_client(limited) as client:
        codes = [client.get("/v1/traces/unknown-trace", headers={"Authorization": f"Bearer {busy}"}) for _ in range(4)]
        assert [c.status_code for c in codes] == [404, 404, 404, 429]
        refused = codes[-1]
        assert refused.headers["Content-Type"] == "application/problem+json"
        # A request every 2 s on average: the next one is 1 to 2 s away.
        assert refused.headers["Retry-After"] in ("1", "2")
        assert "rate" in refused.json()["detail"]
        assert client.get("/v1/traces/unknown-trace", headers={"Authorization": f"Bearer {other}"}).status_code == 404
        assert client.get("/healthz").status_code == 200  # open routes are not limited
        metrics = client.get("/metrics").text
    assert 'tracker_api_auth_refused_total{reason="rate"} 1.0' in metrics


async def test_a_token_with_its_limit_of_requests_in_progress_is_answered_429_at_once(auth_settings, db):
    """The first request waits on a lock the test holds on the traces table; the token's
    second is refused without waiting, and once the first is done the token is served again."""
    capped = dataclasses.replace(auth_settings, max_concurrent=1)
    _, token = await create_token(db, "one at a time", ["read"])
    headers = {"Authorization": f"Bearer {token}"}
    with api_client(capped) as client:
        assert client.get("/v1/traces/warm-up", headers=headers).status_code == 404  # the token is cached
        blocker = await asyncpg.connect(capped.database_url)
        try:
            held = blocker.transaction()
            await held.start()
            await blocker.execute("LOCK TABLE traces IN ACCESS EXCLUSIVE MODE")
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                first = pool.submit(client.get, "/v1/traces/slow", headers=headers)
                deadline = time.monotonic() + 30
                # Only the API's query can wait on a lock in this database.
                while not await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ):
                    assert time.monotonic() < deadline, "the first request never reached the lock"
                    await asyncio.sleep(0.05)
                # Without the cap it would wait on the lock too: bounded, so that the test fails.
                second = await asyncio.wait_for(asyncio.to_thread(client.get, "/v1/traces/slow", headers=headers), 10)
                assert second.status_code == 429 and second.headers["Retry-After"] == "1"
                assert "in progress" in second.json()["detail"]
                await held.commit()
                assert first.result(timeout=30).status_code == 404
        finally:
            await blocker.close()
        assert client.get("/v1/traces/slow", headers=headers).status_code == 404


async def test_migrate_stores_the_operators_first_admin_token_once(auth_settings, monkeypatch, capsys):
    token = "trk_" + "0123456789abcdef" * 3
    monkeypatch.setenv("DATABASE_URL", auth_settings.database_url)
    monkeypatch.setenv("TRACKER_ADMIN_TOKEN", token)
    assert await asyncio.to_thread(cli, ["migrate"]) == 0
    assert "admin token from TRACKER_ADMIN_TOKEN: stored" in capsys.readouterr().out
    assert await asyncio.to_thread(cli, ["migrate"]) == 0
    assert "already stored" in capsys.readouterr().out
    with api_client(auth_settings) as client:
        assert client.get("/v1/stats/counts", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    monkeypatch.setenv("TRACKER_ADMIN_TOKEN", "short")
    assert await asyncio.to_thread(cli, ["migrate"]) == 2
    assert "openssl rand" in capsys.readouterr().err
