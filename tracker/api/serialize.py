"""Database rows -> response documents (the shapes in swagger/openapi.yaml)."""

from __future__ import annotations

from datetime import datetime


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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


def event_out(row, include_body: bool) -> dict:
    out = {
        "event_id": row["event_id"],
        "trace_id": row["trace_id"],
        "service": row["service"],
        "status": row["status"],
        "failed": row["failed"],
        "timestamp": iso(row["ts"]),
        "trace_status": row["trace_status"],
        "start_time": iso(row["start_time"]),
        "end_time": iso(row["end_time"]),
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
