"""The ancestors' routes, with their parameter names and response shapes."""

from __future__ import annotations

import base64
import binascii
import re
import time

from connexion import request

from tracker.api import params, tenancy
from tracker.api.problems import bad_request, not_found
from tracker.api.responses import ok
from tracker.api.serialize import iso
from tracker.queries import compat as q
from tracker.queries.search import lookup_path


def _ranges(prefix: str, values: dict) -> dict:
    return {op: params.time(values.get(f"{prefix}_{op}"), f"{prefix}_{op}") for op in ("lt", "lte", "gt", "gte")}


def _status_out(row) -> dict:
    return {
        "request_id": row["trace_id"],
        "service": row["service"],
        "source": row["source"],
        "status": row["status"],
        "status_msg": row["message"],
        "date": iso(row["ts"]),
        "created_at": iso(row["received_at"]),
        "account": row["account"],
        "org_id": row["org_id"],
        "inventory_id": row["inventory_id"],
        "system_id": row["system_id"],
    }


async def payloads(
    page=0,
    page_size=10,
    sort_by="created_at",
    sort_dir="desc",
    account=None,
    org_id=None,
    inventory_id=None,
    system_id=None,
    **ranges,
):
    started = time.perf_counter()
    async with request.state.reads.acquire() as conn:
        count, rows = await q.payloads(
            conn,
            filters={"account": account, "org_id": org_id, "inventory_id": inventory_id, "system_id": system_id},
            created=_ranges("created_at", ranges),
            sort_by=sort_by,
            sort_dir=sort_dir,
            page=page,
            page_size=page_size,
            tenants=tenancy.current(),
        )
    data = [
        {
            "request_id": r["trace_id"],
            "account": r["account"],
            "org_id": r["org_id"],
            "inventory_id": r["inventory_id"],
            "system_id": r["system_id"],
            "created_at": iso(r["created_at"]),
        }
        for r in rows
    ]
    return ok({"count": count, "elapsed": round(time.perf_counter() - started, 6), "data": data})


async def statuses(
    page=0,
    page_size=10,
    sort_by="date",
    sort_dir="desc",
    service=None,
    source=None,
    status=None,
    status_msg=None,
    **ranges,
):
    started = time.perf_counter()
    async with request.state.reads.acquire() as conn:
        count, rows = await q.statuses(
            conn,
            filters={"service": service, "source": source, "status": status, "status_msg": status_msg},
            dates=_ranges("date", ranges),
            created=_ranges("created_at", ranges),
            sort_by=sort_by,
            sort_dir=sort_dir,
            page=page,
            page_size=page_size,
            tenants=tenancy.current(),
        )
    return ok(
        {"count": count, "elapsed": round(time.perf_counter() - started, 6), "data": [_status_out(r) for r in rows]}
    )


def _duration(seconds: float) -> str:
    """H:MM:SS.ffffff, as Python's str(timedelta) printed it in the Payload Tracker."""
    micros = round(seconds * 1_000_000)
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    secs, micro = divmod(rest, 1_000_000)
    return f"{hours}:{minutes:02d}:{secs:02d}.{micro:06d}"


def durations(rows) -> dict[str, str]:
    """Per service:source, last minus first status time; their sum; and overall last minus first."""
    spans: dict[str, list] = {}
    for row in rows:
        key = f"{row['service']}:{row['source']}" if row["source"] else row["service"]
        first, last = spans.get(key, (row["ts"], row["ts"]))
        spans[key] = [min(first, row["ts"]), max(last, row["ts"])]
    out = {key: _duration((last - first).total_seconds()) for key, (first, last) in spans.items()}
    out["total_time_in_services"] = _duration(sum((last - first).total_seconds() for first, last in spans.values()))
    times = [row["ts"] for row in rows]
    out["total_time"] = _duration((max(times) - min(times)).total_seconds())
    return out


async def payload(request_id: str, sort_by="date", sort_dir="asc"):
    async with request.state.reads.acquire() as conn:
        rows = (
            []
            if await tenancy.hidden(conn, request_id)
            else await q.payload_statuses(conn, request_id, sort_by, sort_dir)
        )
    if not rows:
        raise not_found(f"No status has been seen for request_id {request_id!r}.")
    return ok({"data": [_status_out(r) for r in rows], "durations": durations(rows)})


async def status_api_trace(trace_id: str):
    async with request.state.reads.acquire() as conn:
        rows = [] if await tenancy.hidden(conn, trace_id) else await q.status_api_events(conn, trace_id)
    if not rows:
        raise not_found(f"No event has been seen for trace {trace_id!r}.")
    return ok(
        [
            {
                "trace_id": r["trace_id"],
                "trace_event_id": r["event_id"],
                "domain": r["domain"],
                "domain_id": r["domain_id"],
                "start_time": iso(r["start_time"]),
                "end_time": iso(r["end_time"]),
                "trace_status": r["trace_status"],
                "trace_event_status": "FAILED" if r["failed"] else "OK",
                "user": r["username"],
                "component": r["service"],
                "operation": r["operation"],
                "status_body": r["body"],
                "meta": r["meta"],
                "s3_path": r["path"],
                "duration": r["duration_ms"],
                "exception": r["exception"],
                "errors": [{"message": m} for m in r["errors"]],
            }
            for r in rows
        ]
    )


# The spec's pattern for this parameter, here too (it is also served without validation).
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2,3})?={0,2}$")


def decode_path(encoded: str) -> str | None:
    """Standard or URL-safe base64, padding optional (clients differ). None when the bytes
    are not a path any event can carry (not UTF-8, or U+0000): nothing can match it."""
    try:
        if not _BASE64.match(encoded):
            raise ValueError
        urlsafe = encoded.rstrip("=").translate(str.maketrans("+/", "-_"))
        raw = base64.urlsafe_b64decode(urlsafe + "=" * (-len(urlsafe) % 4))
    except (binascii.Error, ValueError):
        raise bad_request(
            "path must be the object path encoded in base64 (standard or URL-safe alphabet), "
            "e.g. czM6Ly9idWNrZXQva2V5 for s3://bucket/key"
        ) from None
    try:
        path = raw.decode("utf-8")
    except UnicodeError:
        return None
    return None if "\x00" in path else path


async def status_api_from_path(path: str):
    decoded = decode_path(path)
    if decoded is None:
        raise not_found("No event carried that path: it decodes to bytes no path can hold (not UTF-8, or U+0000).")
    async with request.state.reads.acquire() as conn:
        rows = await lookup_path(conn, decoded, tenancy.current())
    if not rows:
        raise not_found(f"No event carried the path {decoded!r}.")
    if len(rows) > 1:
        raise not_found(
            f"{len(rows)} traces carried the path {decoded!r}, so it names none of them; "
            "GET /v1/lookup?path=... lists them all."
        )
    return ok({"trace_id": rows[0]["trace_id"]})
