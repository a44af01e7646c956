"""Commands that ask the API: a trace's status (and --watch), search, services, stats."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from tracker.cli.exits import EXIT_FAILED, EXIT_NOT_FOUND
from tracker.cli.http import ApiError, get, run_api
from tracker.cli.render import printable, table
from tracker.settings import Settings


def _state_table(body: dict) -> str:
    errors = "; ".join(e["message"] for e in body["errors"]) or "-"
    return table(
        [("yes" if body["done"] else "no", body["trace_id"], body["status"], f"{body['elapsed_seconds']:.3f}", errors)],
        ("Done", "Trace ID", "Status", "Elapsed (s)", "Errors"),
    )


async def _history(session, args) -> list[dict]:
    events, cursor = [], None
    while True:
        page = await get(
            session,
            args.api,
            f"/v1/traces/{args.trace_id}/events",
            {"limit": 1000, "cursor": cursor, "include_body": False},
        )
        events += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return events


def _history_table(events: list[dict]) -> str:
    rows = []
    for e in events:
        words = "; ".join([m for m in [e.get("message")] if m] + e["errors"]) or None
        elapsed = f"{e['duration_ms'] / 1000:.3f}" if e.get("duration_ms") is not None else None
        rows.append(
            (e["timestamp"], e["service"], e.get("operation"), e["status"], e.get("trace_status"), elapsed, words)
        )
    return table(rows, ("Time", "Service", "Operation", "Status", "Trace status", "Elapsed (s)", "Message / errors"))


async def _first_state(session, args) -> dict:
    """The trace's state; with --watch, wait up to --wait seconds for its first event.

    Watching starts right after the upload, before the first event is stored (about a
    second later): "unknown" then means "not yet", not "no such trace"."""
    deadline = time.monotonic() + (args.wait if args.watch else 0)
    said = False
    while True:
        try:
            return await get(session, args.api, f"/v1/traces/{args.trace_id}")
        except ApiError as exc:
            if exc.code != EXIT_NOT_FOUND or time.monotonic() >= deadline:
                if exc.code == EXIT_NOT_FOUND and args.watch:
                    raise ApiError(EXIT_NOT_FOUND, f"{exc} (no event within --wait {args.wait:g}s)") from None
                raise
            if not said:
                print(
                    f"{printable(args.trace_id)}: no event yet, waiting up to {args.wait:g}s for the first one",
                    flush=True,
                )
                said = True
            await asyncio.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))


def cmd_status(args, settings: Settings) -> int:
    async def work(session):
        last = None
        body = await _first_state(session, args)
        while True:
            if args.watch and not body["done"]:
                if body["status"] != last:  # one line per change, not a screen per poll
                    print(
                        f"{printable(body['trace_id'])}: {body['status']}, {body['event_count']} event(s), "
                        "not done yet",
                        flush=True,
                    )
                    last = body["status"]
                await asyncio.sleep(args.interval)
                body = await get(session, args.api, f"/v1/traces/{args.trace_id}")
                continue
            break
        history = await _history(session, args) if args.history else None
        if args.format == "json":
            out = dict(body)
            if history is not None:
                out["history"] = history
            print(json.dumps(out, indent=2))
        else:
            print(_state_table(body))
            if history is not None:
                print()
                print(_history_table(history))
        return EXIT_FAILED if body["status"] == "failed" else 0

    return run_api(args, work)


SEARCH_FILTERS = (
    "service",
    "status",
    "done",
    "account",
    "org_id",
    "inventory_id",
    "system_id",
    "source",
    "domain",
    "domain_id",
    "since",
    "until",
    "lookback",
    "min_duration",
    "max_duration",
)


def cmd_search(args, settings: Settings) -> int:
    async def work(session):
        params = {k: getattr(args, k) for k in SEARCH_FILTERS}
        params["limit"] = args.limit
        body = await get(session, args.api, "/v1/traces", params)
        if args.format == "json":
            print(json.dumps(body, indent=2))
            return 0
        print(
            table(
                [
                    (
                        t["trace_id"],
                        "yes" if t["done"] else "no",
                        t["status"],
                        t["first_seen"],
                        f"{t['elapsed_seconds']:.3f}",
                        t["event_count"],
                        t["error_count"],
                    )
                    for t in body["data"]
                ],
                ("Trace ID", "Done", "Status", "First seen", "Elapsed (s)", "Events", "Errors"),
            )
        )
        if body["next_cursor"]:
            print("(more: narrow the filters or raise --limit, at most 1000)", file=sys.stderr)
        return 0

    return run_api(args, work)


def cmd_services(args, settings: Settings) -> int:
    async def work(session):
        body = await get(session, args.api, "/v1/services", {"lookback": args.lookback})
        if args.format == "json":
            print(json.dumps(body, indent=2))
        else:
            print(
                table(
                    [(s["service"], s["events"], s["success"], s["error"]) for s in body["data"]],
                    ("Service", "Events", "Success", "Error"),
                )
            )
        return 0

    return run_api(args, work)


def cmd_stats(args, settings: Settings) -> int:
    async def work(session):
        services = (await get(session, args.api, "/v1/services", {"lookback": args.lookback}))["data"]
        elapsed = {
            e["service"]: e
            for e in (await get(session, args.api, "/v1/stats/elapsed", {"lookback": args.lookback}))["data"]
        }
        rows = []
        for s in services:
            outcomes = s["success"] + s["error"]
            rate = f"{100 * s['success'] / outcomes:.1f}%" if outcomes else None
            p95 = elapsed.get(s["service"], {}).get("p95")
            rows.append(
                (s["service"], s["events"], s["success"], s["error"], rate, f"{p95:.3f}" if p95 is not None else None)
            )
        if args.format == "json":
            fields = ("service", "events", "success", "error", "success_rate", "p95_seconds")
            print(json.dumps([dict(zip(fields, r, strict=True)) for r in rows], indent=2))
        else:
            print(table(rows, ("Service", "Events", "Success", "Error", "Success rate", "p95 elapsed (s)")))
        return 0

    return run_api(args, work)
