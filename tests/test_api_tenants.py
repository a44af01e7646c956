"""Tokens bound to tenants (TRACKER_AUTH=on): on every route, a tenant's token reads exactly
its traces, another tenant's trace answers exactly as an unknown one (bodies compared), and it
publishes only its own events."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from consumer.store import prepare_connection, write_batch
from tests.helpers.api import api_client
from tests.helpers.factories import events_of, payload_tracker, status_api
from tests.test_api_auth import ADMIN, OPEN, WRITE, operations
from tracker.db import init_connection
from tracker.tenants import Tenants
from tracker.tokens import create_token, revoke_token

SHARED_PATH = "s3://shared/object"
UNKNOWN = {"pt": "pt-tenant-z", "sa": "sa-tenant-z", "account": "acct-z", "domain": "dom-z", "path": "s3://z/only"}


def tenant(x: str) -> dict[str, str]:
    return {
        "pt": f"pt-tenant-{x}",
        "sa": f"sa-tenant-{x}",
        "account": f"acct-{x}",
        "domain": f"dom-{x}",
        "path": f"s3://{x}/only",
    }


A, B = tenant("a"), tenant("b")


def docs_of(t: dict[str, str]) -> list[dict]:
    """A Payload Tracker trace of the tenant's account and a Status API trace of its domain,
    each with a failure, and the Status API trace on a path of its own and on the shared one."""
    at = datetime.now(UTC) - timedelta(minutes=5)
    return [
        payload_tracker(t["pt"], "ingress", "received", at, account=t["account"]),
        payload_tracker(t["pt"], "ingress", "success", at + timedelta(seconds=1), account=t["account"]),
        payload_tracker(t["pt"], "puptoo", "error", at + timedelta(seconds=2), status_msg=f"{t['pt']} broke"),
        status_api(t["sa"], "copy", True, at, domain=t["domain"], s3_path=t["path"]),
        status_api(t["sa"], "scan", False, at + timedelta(seconds=1), domain=t["domain"], s3_path=SHARED_PATH),
    ]


def b64(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def urls_naming(t: dict[str, str]) -> dict[str, list[str]]:
    """Per operation, the requests that name one of ``t``'s traces or tenants."""
    return {
        "tracker.api.traces.get_trace": [f"/v1/traces/{t['pt']}", f"/v1/traces/{t['sa']}"],
        "tracker.api.traces.get_trace_events": [f"/v1/traces/{t['pt']}/events", f"/v1/traces/{t['sa']}/events"],
        "tracker.api.traces.search_traces": [f"/v1/traces?account={t['account']}", f"/v1/traces?domain={t['domain']}"],
        "tracker.api.events.search_events": [f"/v1/events?account={t['account']}", f"/v1/events?domain={t['domain']}"],
        "tracker.api.lookup.lookup_path": [f"/v1/lookup?path={t['path']}"],
        "tracker.api.compat.payloads": [f"/v1/payloads?account={t['account']}"],
        "tracker.api.compat.payload": [f"/v1/payloads/{t['pt']}"],
        "tracker.api.compat.statuses": [],  # no tenant parameter: the unfiltered list below
        "tracker.api.compat.status_api_trace": [f"/status/{t['sa']}"],
        "tracker.api.compat.status_api_from_path": [f"/status-from-path/{b64(t['path'])}"],
    }


# Requests that name no one: the lists as a whole, and the path both tenants' traces carried.
UNFILTERED = [
    "/v1/traces",
    "/v1/events?include_body=true",
    "/v1/payloads",
    "/v1/statuses",
    f"/v1/lookup?path={SHARED_PATH}",
    f"/status-from-path/{b64(SHARED_PATH)}",
]


def markers(t: dict[str, str]) -> list[str]:
    """Strings that appear only in ``t``'s data."""
    return [t["pt"], t["sa"], t["account"], t["domain"], t["path"]]


def normalised(text: str, sent: dict[str, str]) -> str:
    """A body with the values the request itself named replaced (a 404 names the id it was
    asked for) and the compatibility routes' timing field removed."""
    for key, value in sent.items():
        text = text.replace(value, f"<{key}>").replace(b64(value), f"<b64 {key}>")
    return re.sub(r'"elapsed":\s*[0-9.e-]+', '"elapsed":0', text)


@pytest.fixture
async def seeded(auth_settings, db):
    await init_connection(db)
    await prepare_connection(db)
    await write_batch(db, events_of(docs_of(A) + docs_of(B)))
    made = {}
    for name, t in (("a", A), ("b", B)):
        _, made[name] = await create_token(
            db, f"tenant {name}", ["read", "write"], tenants=Tenants(account=(t["account"],), domain=(t["domain"],))
        )
    _, made["admin"] = await create_token(db, "admin", ["admin"])
    _, made["expired"] = await create_token(
        db, "expired", ["read"], datetime.now(UTC) - timedelta(seconds=1), Tenants(account=("acct-a",))
    )
    revoked_id, made["revoked"] = await create_token(db, "revoked", ["read"], tenants=Tenants(account=("acct-a",)))
    await revoke_token(db, revoked_id)
    return made


@pytest.fixture
def auth_settings(settings):
    return dataclasses.replace(settings, auth="on", auth_cache_seconds=0, rate_limit=0)


def test_the_tenant_matrix_covers_every_operation_of_the_spec():
    covered = set(urls_naming(A)) | OPEN | WRITE | ADMIN
    assert covered == {operation_id for operation_id, _, _ in operations()}


async def test_a_tenant_token_reads_its_traces_and_nothing_of_another_tenant_on_every_route(auth_settings, seeded):
    wrong: list[tuple] = []
    with api_client(auth_settings) as client:

        def get(url: str, token: str | None) -> tuple[int, str]:
            answer = client.get(url, headers={"Authorization": f"Bearer {token}"} if token else {})
            if answer.status_code >= 500:
                wrong.append(("5xx", url, answer.status_code, answer.text[:300]))
            return answer.status_code, answer.text

        for me, other, token in ((A, B, seeded["a"]), (B, A, seeded["b"])):
            mine, theirs, unknown = urls_naming(me), urls_naming(other), urls_naming(UNKNOWN)
            for operation_id in mine:
                # Its own traces: served, and with its data.
                for url in mine[operation_id]:
                    code, text = get(url, token)
                    if code != 200 or not any(m in text for m in markers(me)):
                        wrong.append(("own data not served", url, code, text[:300]))
                # Another tenant's: the very answer an unknown id or tenant gets.
                for url, unknown_url in zip(theirs[operation_id], unknown[operation_id], strict=True):
                    got = get(url, token)
                    expected = get(unknown_url, token)
                    if (got[0], normalised(got[1], other)) != (expected[0], normalised(expected[1], UNKNOWN)):
                        wrong.append(("differs from unknown", url, got, expected))
            # The lists as a whole (the requests naming the other tenant were compared above).
            for url in UNFILTERED:
                code, text = get(url, token)
                leaked = [m for m in markers(other) if m in text]
                if code != 200 and not url.startswith("/status-from-path/") or leaked:
                    wrong.append(("leak", url, code, leaked, text[:300]))
            # The shared path: its own trace only, where the admin sees two.
            code, text = get(f"/status-from-path/{b64(SHARED_PATH)}", token)
            if (code, json.loads(text).get("trace_id")) != (200, me["sa"]):
                wrong.append(("shared path", code, text[:300]))
            # The admin-only routes: refused, and saying nothing.
            for operation_id, _method, url in operations():
                if operation_id in ADMIN:
                    code, text = get(url, token)
                    if code != 403 or any(m in text for t in (A, B) for m in markers(t)):
                        wrong.append(("admin route", url, code, text[:300]))

        # No, expired and revoked tokens: 401 everywhere, without data.
        for token in (None, "not-a-token", seeded["expired"], seeded["revoked"]):
            for url in UNFILTERED + [u for urls in urls_naming(A).values() for u in urls]:
                code, text = get(url, token)
                if code != 401 or any(m in text for t in (A, B) for m in markers(t) if m not in url):
                    wrong.append(("not refused", url, token and token[:6], code))
        # The admin token sees both tenants.
        for url in ("/v1/traces", "/v1/payloads", "/v1/statuses", "/v1/events"):
            code, text = get(url, seeded["admin"])
            if code != 200 or not all(t["pt"] in text for t in (A, B)):
                wrong.append(("admin does not see all", url, code))
        code, text = get(f"/status-from-path/{b64(SHARED_PATH)}", seeded["admin"])
        if code != 404 or "2 traces" not in text:
            wrong.append(("admin shared path", code, text[:200]))
    assert wrong == []


async def test_a_tenant_write_token_publishes_only_its_own_events_on_its_own_or_new_traces(auth_settings, seeded):
    at = datetime.now(UTC)
    with api_client(auth_settings) as client:
        headers = {"Authorization": f"Bearer {seeded['a']}"}
        own = payload_tracker("pt-new-a", "ingress", "received", at, account="acct-a")
        assert client.post("/v1/events", json=own, headers=headers).status_code == 202
        # Its tenant, on its own existing trace: accepted.
        again = payload_tracker(A["pt"], "ingress", "processing", at, account="acct-a")
        assert client.post("/v1/events", json=again, headers=headers).status_code == 202
        # Another tenant's event, or none at all: refused, saying why.
        for doc in (
            payload_tracker("pt-new-b", "ingress", "received", at, account="acct-b"),
            payload_tracker("pt-new-none", "ingress", "received", at),
        ):
            answer = client.post("/v1/events", json=doc, headers=headers)
            assert answer.status_code == 400, answer.text
            assert "carries none of them" in answer.json()["detail"]
        # Its own tenant on another tenant's trace: refused (it would change who sees that trace).
        hijack = payload_tracker(B["pt"], "ingress", "received", at, account="acct-a")
        answer = client.post("/v1/events", json=hijack, headers=headers)
        assert answer.status_code == 400 and "publish under a new trace id" in answer.json()["detail"]
        # Starting a trace: only with a tenant of the token in the body.
        assert client.post("/v1/traces", json={"service": "ingress"}, headers=headers).status_code == 400
        started = client.post("/v1/traces", json={"service": "ingress", "domain": "dom-a"}, headers=headers)
        assert started.status_code == 202, started.text


async def test_an_admin_token_cannot_be_bound_to_tenants(db):
    with pytest.raises(ValueError, match="cannot be bound"):
        await create_token(db, "bound admin", ["admin"], tenants=Tenants(account=("acct-a",)))
