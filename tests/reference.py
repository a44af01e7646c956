"""The trace state computed from scratch from a set of events: what the
incremental rollups in the database must always equal."""

from __future__ import annotations

from collections import defaultdict

from tracker.events import Event


def _latest(events: list[Event]) -> Event:
    return max(events, key=lambda e: (e.timestamp, e.event_id))


def expected_state(events: list[Event]) -> tuple[dict, dict]:
    """({trace_id: trace fields}, {(trace_id, service): service fields}) from unique events."""
    unique = {e.event_id: e for e in events}.values()
    by_trace: dict[str, list[Event]] = defaultdict(list)
    for event in unique:
        by_trace[event.trace_id].append(event)
    traces, services = {}, {}
    for trace_id, evs in by_trace.items():
        by_service: dict[str, list[Event]] = defaultdict(list)
        for e in evs:
            by_service[e.service].append(e)
        for service, sevs in by_service.items():
            latest = _latest(sevs)
            services[(trace_id, service)] = {
                "first_at": min(e.timestamp for e in sevs),
                "last_at": max(e.timestamp for e in sevs),
                "event_count": len(sevs),
                "latest_status": latest.status,
                "latest_failed": latest.failed,
            }
        finished = [e for e in evs if e.trace_status == "FINISHED"]
        if finished:
            status = "failed" if _latest(finished).failed else "success"
        elif any(s["latest_failed"] for (t, _), s in services.items() if t == trace_id):
            status = "failed"
        else:
            status = "in_progress"
        traces[trace_id] = {
            "first_at": min(e.timestamp for e in evs),
            "last_at": max(e.timestamp for e in evs),
            "event_count": len(evs),
            "error_count": sum(e.failed for e in evs),
            "done": bool(finished),
            "finish_at": _latest(finished).timestamp if finished else None,
            "status": status,
        }
    return traces, services


async def stored_state(conn) -> tuple[dict, dict]:
    """The same two dicts, read from the database."""
    traces = {
        r["trace_id"]: {k: r[k] for k in ("first_at", "last_at", "event_count", "error_count", "done",
                                          "finish_at", "status")}
        for r in await conn.fetch("SELECT * FROM traces")
    }
    services = {
        (r["trace_id"], r["service"]): {k: r[k] for k in ("first_at", "last_at", "event_count", "latest_status",
                                                         "latest_failed")}
        for r in await conn.fetch("SELECT * FROM trace_services")
    }
    return traces, services
