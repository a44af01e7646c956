"""The read API's handlers against the real database, through the API application in process
(Connexion's test client; parameters and responses validated against the spec). The API as a
process is tested end to end in test_end_to_end.py, test_cli.py and test_producers.py."""

from __future__ import annotations

import asyncio
import base64
import random
from datetime import UTC, datetime, timedelta

import pytest

from consumer.store import prepare_connection, write_batch
from tests.helpers.api import api_client
from tests.helpers.factories import events_of, payload_tracker, pipeline_trace, status_api, tracker_event
from tracker.events import Event, Invalid, parse_message


async def store(db, docs) -> list[Event]:
    await prepare_connection(db)
    events = events_of(docs)
    await write_batch(db, events)
    return events


@pytest.fixture
def api(settings):
    """GET through the API application, in process (tests/helpers/api.py); the body as JSON."""
    with api_client(settings) as client:

        async def get(path: str, expect: int = 200):
            response = client.get(path)
            body = response.json()
            assert response.status_code == expect, (path, response.status_code, body)
            if expect >= 400:
                assert response.headers["Content-Type"].startswith("application/problem+json")
                assert body["detail"]
            return body

        yield get


NOW = datetime.now(UTC).replace(microsecond=0)


async def walk(get, path: str, limit: int) -> list[dict]:
    items, cursor = [], None
    while True:
        sep = "&" if "?" in path else "?"
        page = await get(f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        items += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def test_trace_search_filters(db, api):
    docs = [
        payload_tracker(
            "s-1",
            "ingress",
            "received",
            NOW - timedelta(minutes=50),
            account="acc1",
            org_id="o1",
            inventory_id="inv1",
            system_id="sys1",
            source="upload",
        ),
        payload_tracker("s-1", "ingress", "error", NOW - timedelta(minutes=40), status_msg="bad tarball"),
        payload_tracker("s-2", "ingress", "received", NOW - timedelta(hours=5), account="acc2"),
        payload_tracker("s-2", "puptoo", "success", NOW - timedelta(hours=4), account="acc2"),
        tracker_event("s-2", "pipeline", "success", NOW - timedelta(hours=4), trace_status="FINISHED"),
        {**status_api("s-3", "copy", True, NOW - timedelta(minutes=5)), "domain": "datasets", "domain_id": "d7"},
    ]
    await store(db, docs)

    def ids(body):
        return sorted(t["trace_id"] for t in body["data"])

    assert ids(await api("/v1/traces")) == ["s-1", "s-2", "s-3"]
    assert ids(await api("/v1/traces?status=failed")) == ["s-1"]
    assert ids(await api("/v1/traces?done=true")) == ["s-2"]
    assert ids(await api("/v1/traces?done=false")) == ["s-1", "s-3"]
    assert ids(await api("/v1/traces?service=puptoo")) == ["s-2"]
    for key, value, want in (
        ("account", "acc1", ["s-1"]),
        ("org_id", "o1", ["s-1"]),
        ("inventory_id", "inv1", ["s-1"]),
        ("system_id", "sys1", ["s-1"]),
        ("source", "upload", ["s-1"]),
        ("domain", "datasets", ["s-3"]),
        ("domain_id", "d7", ["s-3"]),
    ):
        assert ids(await api(f"/v1/traces?{key}={value}")) == want, key
    assert ids(await api("/v1/traces?lookback=1h")) == ["s-1", "s-3"]
    since = (NOW - timedelta(hours=6)).isoformat().replace("+00:00", "Z")
    until = (NOW - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    assert ids(await api(f"/v1/traces?since={since}&until={until}")) == ["s-2"]
    assert ids(await api("/v1/traces?min_duration=30m")) == ["s-2"]
    assert ids(await api("/v1/traces?max_duration=15m")) == ["s-1", "s-3"]
    assert ids(await api("/v1/traces?status=failed&account=acc2")) == []
    one = (await api("/v1/traces?account=acc1"))["data"][0]
    assert one["error_count"] == 1 and one["elapsed_seconds"] == 600 and one["status"] == "failed"


async def test_search_errors_say_what_is_allowed(api):
    body = await api("/v1/traces?lookback=yesterday", expect=400)
    assert "lookback" in body["detail"] and "24h" in body["detail"]
    body = await api("/v1/traces?status=broken", expect=400)
    assert "status" in body["detail"] and "failed" in body["detail"]
    body = await api("/v1/traces?since=2024-01-01T00:00:00Z&lookback=1h", expect=400)
    assert "either" in body["detail"]
    body = await api("/v1/traces?since=2024-02-01T00:00:00Z&until=2024-01-01T00:00:00Z", expect=400)
    assert "empty" in body["detail"]
    body = await api("/v1/traces?limit=1001", expect=400)
    assert "1000" in body["detail"]
    body = await api("/v1/traces?since=tuesday", expect=400)
    assert "ISO 8601" in body["detail"]


async def test_trace_search_pages_return_every_match_once_while_events_arrive(db, api, database_url):
    rng = random.Random(3)
    docs = []
    for i in range(60):
        docs += pipeline_trace(f"page-{i:03d}", rng, services=2, finish=False)
    await store(db, docs)

    import asyncpg

    from tracker.db import init_connection

    writer = await asyncpg.connect(database_url)
    await init_connection(writer)
    await prepare_connection(writer)
    stop = asyncio.Event()

    async def keep_writing():
        # New traces and new events for existing ones, while the pages are walked.
        n = 0
        while not stop.is_set():
            batch = [
                payload_tracker(f"new-{n}", "ingress", "received", NOW),
                payload_tracker(f"page-{n % 60:03d}", "late", "received", NOW + timedelta(seconds=n)),
            ]
            await write_batch(writer, events_of(batch))
            n += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(keep_writing())
    try:
        seen = await walk(api, "/v1/traces?lookback=3650d", limit=7)
    finally:
        stop.set()
        await task
        await writer.close()
    original = [t["trace_id"] for t in seen if t["trace_id"].startswith("page-")]
    assert sorted(original) == [f"page-{i:03d}" for i in range(60)]  # each once
    assert len(seen) == len({t["trace_id"] for t in seen})


async def test_event_search_filters_and_pages(db, api):
    docs = []
    now = datetime.now(UTC)
    for i in range(30):
        # Half a minute off the minute marks, so that lookback=10m is not decided by a race.
        docs.append(
            payload_tracker(
                f"ev-{i % 3}",
                f"svc{i % 2}",
                "received" if i % 3 else "error",
                now - timedelta(minutes=i, seconds=30),
                account=f"acc{i % 3}",
                source="src",
            )
        )
    await store(db, docs)
    everything = await walk(api, "/v1/events?lookback=1d", limit=4)
    assert len(everything) == 30 == len({e["event_id"] for e in everything})
    keys = [(e["timestamp"], e["event_id"]) for e in everything]
    assert keys == sorted(keys, reverse=True)
    svc0 = await walk(api, "/v1/events?service=svc0", limit=5)
    assert len(svc0) == 15 and {e["service"] for e in svc0} == {"svc0"}
    errors = await walk(api, "/v1/events?status=error", limit=50)
    assert len(errors) == 10
    acc1 = await walk(api, "/v1/events?account=acc1", limit=50)
    assert {e["trace_id"] for e in acc1} == {"ev-1"}
    recent = await walk(api, "/v1/events?lookback=10m", limit=50)
    assert len(recent) == 10
    with_body = await api("/v1/events?limit=1&include_body=true")
    assert "body" in with_body["data"][0]


async def test_lookup_by_path_and_status_api_routes(db, api):
    path = "s3://bucket/raw/file.csv"
    await store(
        db,
        [
            {
                **status_api("p-1", "ingest", True, NOW - timedelta(minutes=3)),
                "s3_path": path,
                "status_body": {"files_incoming": [path]},
            },
            {
                **status_api("p-1", "copy", False, NOW - timedelta(minutes=2)),
                "errors": [{"message": {"en": "denied"}}],
                "trace_status": "FINISHED",
            },
            {**status_api("p-2", "ingest", True, NOW - timedelta(minutes=1)), "s3_path": "s3://bucket/other"},
            {**status_api("p-3", "ingest", True, NOW), "s3_path": "s3://bucket/other"},
        ],
    )
    found = await api(f"/v1/lookup?path={path}")
    assert [m["trace_id"] for m in found["data"]] == ["p-1"]
    assert (await api("/v1/lookup?path=s3://nothing"))["data"] == []

    encoded = base64.b64encode(path.encode()).decode()
    assert await api(f"/status-from-path/{encoded}") == {"trace_id": "p-1"}
    urlsafe = base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")
    assert await api(f"/status-from-path/{urlsafe}") == {"trace_id": "p-1"}
    ambiguous = await api(f"/status-from-path/{base64.b64encode(b's3://bucket/other').decode()}", expect=404)
    assert "2 traces" in ambiguous["detail"]
    await api(f"/status-from-path/{base64.b64encode(b's3://none').decode()}", expect=404)
    bad = await api("/status-from-path/not*base64", expect=400)
    assert "base64" in bad["detail"]
    nul_path = base64.b64encode(b"nul\x00path").decode()
    # Valid base64 of bytes no stored path can hold: unknown, like any other path.
    assert "U+0000" in (await api(f"/status-from-path/{nul_path}", expect=404))["detail"]

    events = await api("/status/p-1")
    assert [e["component"] for e in events] == ["ingest", "copy"]
    assert [e["trace_event_status"] for e in events] == ["OK", "FAILED"]
    assert events[0]["s3_path"] == path and events[0]["status_body"] == {"files_incoming": [path]}
    assert events[1]["errors"] == [{"message": "denied"}] and events[1]["trace_status"] == "FINISHED"
    assert set(events[0]) >= {
        "trace_id",
        "trace_event_id",
        "domain",
        "domain_id",
        "start_time",
        "end_time",
        "trace_status",
        "trace_event_status",
        "user",
        "component",
        "operation",
        "status_body",
        "meta",
        "s3_path",
        "duration",
        "exception",
        "errors",
    }
    await api("/status/unknown", expect=404)


async def test_payload_tracker_routes_keep_their_parameters_and_shapes(db, api):
    t0 = NOW - timedelta(minutes=30)
    await store(
        db,
        [
            payload_tracker(
                "req-1",
                "ingress",
                "received",
                t0,
                source="upload",
                account="001",
                org_id="9",
                inventory_id="inv-a",
                system_id="sys-a",
            ),
            payload_tracker("req-1", "ingress", "success", t0 + timedelta(seconds=2), source="upload"),
            payload_tracker("req-1", "puptoo", "received", t0 + timedelta(seconds=3)),
            payload_tracker("req-1", "puptoo", "success", t0 + timedelta(seconds=10), status_msg="done"),
            payload_tracker("req-2", "ingress", "received", t0 + timedelta(minutes=1), account="002"),
        ],
    )
    body = await api("/v1/payloads?page=0&page_size=10&sort_by=account&sort_dir=asc")
    assert set(body) == {"count", "elapsed", "data"} and body["count"] == 2
    assert [p["request_id"] for p in body["data"]] == ["req-1", "req-2"]
    assert set(body["data"][0]) >= {"request_id", "account", "org_id", "inventory_id", "system_id", "created_at"}
    assert (await api("/v1/payloads?account=002"))["data"][0]["request_id"] == "req-2"
    assert (await api("/v1/payloads?inventory_id=inv-a"))["count"] == 1
    assert (await api("/v1/payloads?page=1&page_size=1&sort_by=account&sort_dir=asc"))["data"][0][
        "request_id"
    ] == "req-2"
    future = (NOW + timedelta(days=1)).isoformat()
    assert (await api(f"/v1/payloads?created_at_gt={future.replace('+00:00', 'Z')}"))["count"] == 0
    assert (await api(f"/v1/payloads?created_at_lte={future.replace('+00:00', 'Z')}"))["count"] == 2

    one = await api("/v1/payloads/req-1")
    assert [s["status"] for s in one["data"]] == ["received", "success", "received", "success"]
    assert one["durations"] == {
        "ingress:upload": "0:00:02.000000",
        "puptoo": "0:00:07.000000",
        "total_time_in_services": "0:00:09.000000",
        "total_time": "0:00:10.000000",
    }
    by_service = await api("/v1/payloads/req-1?sort_by=service&sort_dir=desc")
    assert by_service["data"][0]["service"] == "puptoo"
    await api("/v1/payloads/none", expect=404)

    statuses = await api("/v1/statuses?service=puptoo&sort_by=date&sort_dir=asc")
    assert statuses["count"] == 2 and [s["status"] for s in statuses["data"]] == ["received", "success"]
    assert (await api("/v1/statuses?status_msg=done"))["count"] == 1
    assert (await api("/v1/statuses?source=upload"))["count"] == 2
    cut = (t0 + timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    assert (await api(f"/v1/statuses?date_lt={cut}"))["count"] == 3
    assert (await api(f"/v1/statuses?date_gte={cut}"))["count"] == 2
    assert (await api("/v1/statuses?page_size=2&page=2"))["data"][0]["request_id"] in ("req-1", "req-2")
    body = await api("/v1/statuses?sort_by=nonsense", expect=400)
    assert "sort_by" in body["detail"]


async def test_rollup_endpoints(db, api):
    t0 = NOW - timedelta(hours=2)
    docs = []
    for i in range(10):
        start = t0 + timedelta(minutes=i)
        docs.append(payload_tracker(f"r-{i}", "ingress", "received", start))
        docs.append(
            payload_tracker(f"r-{i}", "ingress", "error" if i == 9 else "success", start + timedelta(seconds=i + 1))
        )
        docs.append(
            tracker_event(f"r-{i}", "pipeline", "success", start + timedelta(seconds=20), trace_status="FINISHED")
        )
    docs.append(payload_tracker("old", "ingress", "received", NOW - timedelta(days=3)))
    await store(db, docs)

    services = {s["service"]: s for s in (await api("/v1/services"))["data"]}
    assert services["ingress"] == {"service": "ingress", "events": 20, "success": 9, "error": 1}
    assert (await api("/v1/services?lookback=7d"))["data"][0]["events"] == 21

    counts = (await api("/v1/stats/counts?lookback=1d&bucket=1d&service=ingress"))["data"]
    assert sum(c["events"] for c in counts) == 20 and {c["service"] for c in counts} == {"ingress"}

    rates = {r["service"]: r for r in (await api("/v1/stats/success-rate"))["data"]}
    assert rates["ingress"]["success_rate"] == 0.9 and rates["pipeline"]["success_rate"] == 1

    elapsed = {e["service"]: e for e in (await api("/v1/stats/elapsed"))["data"]}
    ingress = elapsed["ingress"]
    assert ingress["count"] == 10
    # received -> outcome took 1..10 s: p50 ~5 s, p99 ~10 s, within the 7% bins
    assert 5 * 0.9 <= ingress["p50"] <= 5 * 1.1 and 10 * 0.9 <= ingress["p99"] <= 10 * 1.1
    assert elapsed["*trace*"]["count"] == 10 and 20 * 0.9 <= elapsed["*trace*"]["p50"] <= 20 * 1.1
    body = await api("/v1/stats/counts?bucket=10s", expect=400)
    assert "1m" in body["detail"]


async def test_windows_are_exact_across_the_hourly_and_minute_rollups(db, api):
    """A window that starts mid-hour reads whole hours from the hourly rollup and the rest
    from the per-minute one: the counts are the same as counting the events."""
    anchor = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=150)
    docs = []
    for i in range(10):
        start = anchor + timedelta(minutes=15 * i, seconds=20)
        docs.append(payload_tracker(f"w-{i}", "ingress", "received", start))
        docs.append(payload_tracker(f"w-{i}", "ingress", "success", start + timedelta(seconds=i + 1)))
    await store(db, docs)
    since = anchor + timedelta(minutes=37, seconds=30)  # keeps i >= 3
    lookback = f"{(datetime.now(UTC) - since).total_seconds():.3f}s"
    services = (await api(f"/v1/services?lookback={lookback}"))["data"]
    assert services == [{"service": "ingress", "events": 14, "success": 7, "error": 0}]
    counts = (await api(f"/v1/stats/counts?lookback={lookback}&bucket=1h"))["data"]
    assert sum(c["events"] for c in counts) == 14
    fine = (await api(f"/v1/stats/counts?lookback={lookback}&bucket=15m"))["data"]
    assert sum(c["events"] for c in fine) == 14


async def test_dead_letters_are_listed_with_reason_origin_and_a_bounded_excerpt(db, api):
    from aiokafka.structs import ConsumerRecord

    from consumer.deadletter import dead_letter

    def record(offset: int, value: bytes | None) -> ConsumerRecord:
        return ConsumerRecord(
            "t.events",
            2,
            offset,
            1_700_000_000_000 + offset,
            0,
            b"key-%d" % offset,
            value,
            None,
            len(value or b""),
            len(value or b""),
            [],
        )

    values = [b"{not json", None, b'{"service": "x"}', b'{"big": "' + b"y" * 5000 + b'"}']
    letters = []
    for i, v in enumerate(values):
        rejected = parse_message(v, max_bytes=3000)
        assert isinstance(rejected, Invalid), rejected
        letters.append(dead_letter(record(10 + i, v), rejected, limit=1 << 20))
    await prepare_connection(db)
    await write_batch(db, [], letters)
    await write_batch(db, [], letters)  # the batch redelivered: recorded once

    items = await walk(api, "/v1/dead-letters", limit=3)
    assert [i["offset"] for i in items] == [13, 12, 11, 10]  # newest first, across pages
    by_offset = {i["offset"]: i for i in items}
    assert by_offset[10]["reason"] == "not_json" and by_offset[10]["excerpt"] == "{not json"
    assert by_offset[11]["reason"] == "null_value" and by_offset[11]["excerpt"] is None
    assert by_offset[12]["reason"] == "missing_field" and "request_id" in by_offset[12]["detail"]
    big = by_offset[13]
    assert big["reason"] == "too_large" and big["size"] == len(values[3] or b"")
    assert len(big["excerpt"]) == 1000 and big["excerpt_truncated"] is True
    assert big["topic"] == "t.events" and big["partition"] == 2 and big["key"] == "key-13"
    assert big["message_at"].startswith("2023-11-14T22:13:20") and big["published"] is False
    only = await api("/v1/dead-letters?reason=null_value")
    assert [i["offset"] for i in only["data"]] == [11]
    await api("/v1/dead-letters?reason=bogus", expect=400)
    await api(
        "/v1/dead-letters?cursor="
        + base64.urlsafe_b64encode(b'["2024-01-01T00:00:00+00:00","x"]').decode().rstrip("="),
        expect=400,
    )
