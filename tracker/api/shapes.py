"""Database rows -> response documents (the shapes in swagger/openapi.yaml)."""

from __future__ import annotations

from datetime import datetime, timezone


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_iso = iso


def trace_summary_out(row) -> dict:
    out = {
        "trace_id": row["trace_id"],
        "done": row["done"],
        "status": row["status"],
        "first_seen": iso(row["first_at"]),
        "last_seen": iso(row["last_at"]),
        "elapsed_seconds": (row["last_at"] - row["first_at"]).total_seconds(),
        "event_count": row["event_count"],
        "error_count": row["error_count"],
    }
    for key in ("account", "org_id", "inventory_id", "system_id", "source", "domain", "domain_id"):
        out[key] = row[key]
    return out


def _json_time(value: str) -> datetime:
    # json_build_object renders timestamptz as "2026-01-01T10:00:00.5+00:00".
    return datetime.fromisoformat(value).astimezone(timezone.utc)


def trace_out(trace) -> dict:
    services = []
    for s in trace["services"]:
        first, last = _json_time(s["first_at"]), _json_time(s["last_at"])
        services.append({
            "service": s["service"], "first_seen": first.isoformat(), "last_seen": last.isoformat(),
            "elapsed_seconds": (last - first).total_seconds(), "latest_status": s["latest_status"],
            "failed": s["latest_failed"], "event_count": s["event_count"],
        })
    return {
        "trace_id": trace["trace_id"],
        "done": trace["done"],
        "status": trace["status"],
        "first_seen": iso(trace["first_at"]),
        "last_seen": iso(trace["last_at"]),
        "elapsed_seconds": (trace["last_at"] - trace["first_at"]).total_seconds(),
        "finished_at": iso(trace["finish_at"]),
        "event_count": trace["event_count"],
        "error_count": trace["error_count"],
        "services": services,
        "errors": [error for row in trace["errors"] for error in error_messages(row)],
    }


def error_messages(row) -> list[dict]:
    """The messages of one erroneous event; a failure with no words still gets one line."""
    messages = list(row["errors"])
    if row["exception"]:
        messages.append(row["exception"])
    if row["failed"] and row["message"]:
        messages.insert(0, row["message"])
    if row["failed"] and not messages:
        messages.append(f"{row['service']} reported status {row['status']!r}")
    base = {"timestamp": _json_time(row["ts"]).isoformat(), "service": row["service"], "event_id": row["event_id"]}
    return [{**base, "message": m} for m in messages]


def event_out(row, include_body: bool) -> dict:
    out = {
        "event_id": row["event_id"],
        "trace_id": row["trace_id"],
        "service": row["service"],
        "status": row["status"],
        "failed": row["failed"],
        "timestamp": _iso(row["ts"]),
        "trace_status": row["trace_status"],
        "start_time": _iso(row["start_time"]),
        "end_time": _iso(row["end_time"]),
        "duration_ms": row["duration_ms"],
        "source": row["source"],
        "account": row["account"],
        "org_id": row["org_id"],
        "inventory_id": row["inventory_id"],
        "system_id": row["system_id"],
        "domain": row["domain"],
        "domain_id": row["domain_id"],
        "user": row["username"],
        "operation": row["operation"],
        "path": row["path"],
        "message": row["message"],
        "errors": list(row["errors"]),
        "format": row["format"],
    }
    if include_body:
        out.update(exception=row["exception"], meta=row["meta"], body=row["body"])
    return out
