"""The trace state computed from scratch from a set of events: what the
incremental rollups in the database must always equal."""

from __future__ import annotations

import math
from collections import defaultdict

from tracker.events import Event


def _latest(events: list[Event]) -> Event:
    return max(events, key=lambda e: (e.timestamp, e.event_id))


def _start(e: Event):
    """When an event says its step began: a Status API start_time before the event's time."""
    return min(e.timestamp, e.start_time or e.timestamp)


def one_per_key(events: list[Event]) -> list[Event]:
    """The events as the events table keeps them: one per key (event_id, ts)."""
    return list({(e.event_id, e.timestamp): e for e in events}.values())


def expected_state(events: list[Event]) -> tuple[dict, dict]:
    """({trace_id: trace fields}, {(trace_id, service): service fields}) from the events, one per
    key (one_per_key)."""
    unique = one_per_key(events)
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
                "first_at": min(_start(e) for e in sevs),
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
            "first_at": min(_start(e) for e in evs),
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
        r["trace_id"]: {
            k: r[k] for k in ("first_at", "last_at", "event_count", "error_count", "done", "finish_at", "status")
        }
        for r in await conn.fetch("SELECT * FROM traces")
    }
    services = {
        (r["trace_id"], r["service"]): {
            k: r[k] for k in ("first_at", "last_at", "event_count", "latest_status", "latest_failed")
        }
        for r in await conn.fetch("SELECT * FROM trace_services")
    }
    return traces, services


def elapsed_bin(seconds: float) -> int:
    """Python twin of the SQL function tracker_elapsed_bin (migration 002)."""
    ms = max(seconds * 1000, 1)
    return min(160, max(0, math.ceil(math.log(ms) / math.log(1.15))))


def _hour(ts):
    return ts.replace(minute=0, second=0, microsecond=0)


def expected_rollups(events: list[Event]) -> tuple[dict, dict]:
    """({(minute, service, status): events}, {(hour, kind, service, failed, bin): n}) from scratch."""
    unique = one_per_key(events)
    counts: dict = defaultdict(int)
    for e in unique:
        counts[(e.timestamp.replace(second=0, microsecond=0), e.service, e.status)] += 1
    elapsed: dict = defaultdict(int)
    by_service: dict = defaultdict(list)
    by_trace: dict = defaultdict(list)
    for e in unique:
        by_service[(e.trace_id, e.service)].append(e)
        by_trace[e.trace_id].append(e)
    for (_, service), evs in by_service.items():
        start = min(_start(e) for e in evs)
        outcomes = sorted(
            (e for e in evs if e.status == "success" or e.failed), key=lambda e: (e.timestamp, e.event_id)
        )
        if outcomes:
            first = outcomes[0]
            elapsed[
                (
                    _hour(first.timestamp),
                    "service",
                    service,
                    first.failed,
                    elapsed_bin((first.timestamp - start).total_seconds()),
                )
            ] += 1
    for evs in by_trace.values():
        finished = [e for e in evs if e.trace_status == "FINISHED"]
        if finished:
            finish = _latest(finished)
            first_at = min(_start(e) for e in evs)
            elapsed[
                (
                    _hour(finish.timestamp),
                    "trace",
                    "",
                    finish.failed,
                    elapsed_bin((finish.timestamp - first_at).total_seconds()),
                )
            ] += 1
    return dict(counts), dict(elapsed)


async def stored_rollups(conn) -> tuple[dict, dict]:
    counts = {
        (r["bucket"], r["service"], r["status"]): r["events"]
        for r in await conn.fetch("SELECT * FROM rollup_counts WHERE events <> 0")
    }
    hourly = await conn.fetch("SELECT * FROM rollup_counts_hour")
    from_minutes: dict = defaultdict(int)
    for (bucket, service, status), n in counts.items():
        from_minutes[(bucket.replace(minute=0), service, status)] += n
    assert {(r["bucket"], r["service"], r["status"]): r["events"] for r in hourly} == dict(from_minutes)
    elapsed = {
        (r["bucket"], r["kind"], r["service"], r["failed"], r["bin"]): r["n"]
        for r in await conn.fetch("SELECT * FROM rollup_elapsed WHERE n <> 0")
    }
    return counts, elapsed
