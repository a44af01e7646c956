"""The `tracker` command: run the stack, migrate, send an event, ask for a trace's status.

Exit codes: 0 success; 1 the trace failed (status) or the operation failed;
2 bad usage or invalid input; 3 the API or Kafka is unreachable; 4 unknown trace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from datetime import datetime, timezone

from tracker.logs import setup_logging
from tracker.settings import Settings, SettingsError

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 1, 2, 3, 4


def cmd_up(args, settings: Settings) -> int:
    from tracker.devservices.stack import up

    return up(settings)


def cmd_migrate(args, settings: Settings) -> int:
    from tracker.migrate import migrate

    if not settings.database_url:
        raise SettingsError("DATABASE_URL must be set")
    applied = asyncio.run(migrate(settings.database_url))
    print("applied: " + ", ".join(applied) if applied else "up to date")
    return 0


def cmd_retention(args, settings: Settings) -> int:
    import asyncpg

    from tracker.maintenance import run_maintenance

    if not settings.database_url:
        raise SettingsError("DATABASE_URL must be set")

    async def go():
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await run_maintenance(conn, retention_days=settings.retention_days)
        finally:
            await conn.close()

    result = asyncio.run(go())
    print(json.dumps({"retention_days": settings.retention_days, "partitions_created": result.created,
                      "partitions_dropped": result.dropped, "traces_deleted": result.traces_deleted}))
    return 0


def cmd_topics(args, settings: Settings) -> int:
    from tracker.topics import ensure_topics

    if not settings.kafka_bootstrap_servers:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS must be set")
    created = asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, [settings.topic, settings.dlq_topic],
                                        settings.topic_partitions,
                                        max_message_bytes=settings.max_message_bytes))
    print("created: " + ", ".join(created) if created else "topics exist")
    return 0


def _event_from_args(args) -> dict:
    if args.trace_id is None:
        text = sys.stdin.read()
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SettingsError(f"stdin is not a JSON event: {exc}") from None
    event = {
        "trace_id": args.trace_id,
        "service": args.service,
        "status": args.status,
        "timestamp": args.timestamp or datetime.now(timezone.utc).isoformat(),
    }
    for key in ("trace_status", "message", "operation", "event_id"):
        if getattr(args, key):
            event[key] = getattr(args, key)
    if args.body:
        try:
            event["body"] = json.loads(args.body)
        except ValueError as exc:
            raise SettingsError(f"--body is not JSON ({exc}); quote it, e.g. --body '{{\"size\": 3}}'") from None
    return event


def cmd_send(args, settings: Settings) -> int:
    from tracker.events import Invalid, encode_document, parse_message
    from tracker.producer import send_one

    if not settings.kafka_bootstrap_servers:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS must be set")
    if args.trace_id is not None and not (args.service and args.status):
        raise SettingsError("--service and --status are required with --trace-id")
    value = encode_document(_event_from_args(args))
    parsed = parse_message(value, max_bytes=settings.max_message_bytes)
    if isinstance(parsed, Invalid):
        print(f"tracker send: invalid event ({parsed.reason}): {parsed.detail}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(send_one(settings, value, key=parsed.trace_id))
    except Exception as exc:  # any Kafka failure: say so in one line
        print(f"tracker send: Kafka at {settings.kafka_bootstrap_servers} did not take the event: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps({"sent": True, "topic": settings.topic, "trace_id": parsed.trace_id,
                      "event_id": parsed.event_id}))
    return 0


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def _get(session, api: str, path: str, params: dict | None = None):
    params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in (params or {}).items() if v is not None}
    async with session.get(f"{api.rstrip('/')}{path}", params=params) as response:
        body = await response.json(content_type=None)
        if response.status == 404:
            raise ApiError(EXIT_NOT_FOUND, body.get("detail", "not found"))
        if response.status != 200:
            raise ApiError(EXIT_FAILED, f"the API answered {response.status}: {body.get('detail', body)}")
        return body


def _run_api(args, work) -> int:
    """Run ``work(session)`` against the API; map failures to the documented exit codes."""
    import aiohttp

    async def main():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await work(session)

    try:
        return asyncio.run(main())
    except ApiError as exc:
        print(f"tracker {args.command}: {printable(exc)}", file=sys.stderr)
        return exc.code
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        print(f"tracker {args.command}: the API at {args.api} is unreachable ({exc})", file=sys.stderr)
        return EXIT_UNREACHABLE


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    """Text from the API made safe for a terminal: control characters shown escaped (\\n,
    \\x1b), never interpreted. Events are untrusted input; an escape sequence in one must
    not drive the reader's terminal, a newline must not break a table row."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def table(rows: list[tuple], headers: tuple) -> str:
    """A plain aligned table; a dependency would add nothing these few lines do not do."""
    cells = [tuple(str(v) for v in headers)] + [tuple("-" if v is None else printable(v) for v in row)
                                                for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def _state_table(body: dict) -> str:
    errors = "; ".join(e["message"] for e in body["errors"]) or "-"
    return table([("yes" if body["done"] else "no", body["trace_id"], body["status"],
                   f"{body['elapsed_seconds']:.3f}", errors)],
                 ("Done", "Trace ID", "Status", "Elapsed (s)", "Errors"))


async def _history(session, args) -> list[dict]:
    events, cursor = [], None
    while True:
        page = await _get(session, args.api, f"/v1/traces/{args.trace_id}/events",
                          {"limit": 1000, "cursor": cursor, "include_body": False})
        events += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return events


def _history_table(events: list[dict]) -> str:
    rows = []
    for e in events:
        words = "; ".join([m for m in [e.get("message")] if m] + e["errors"]) or None
        elapsed = f"{e['duration_ms'] / 1000:.3f}" if e.get("duration_ms") is not None else None
        rows.append((e["timestamp"], e["service"], e.get("operation"), e["status"], e.get("trace_status"),
                     elapsed, words))
    return table(rows, ("Time", "Service", "Operation", "Status", "Trace status", "Elapsed (s)", "Message / errors"))


async def _first_state(session, args) -> dict:
    """The trace's state; with --watch, wait up to --wait seconds for its first event.

    Watching starts right after the upload, before the first event is stored (about a
    second later): "unknown" then means "not yet", not "no such trace"."""
    deadline = time.monotonic() + (args.wait if args.watch else 0)
    said = False
    while True:
        try:
            return await _get(session, args.api, f"/v1/traces/{args.trace_id}")
        except ApiError as exc:
            if exc.code != EXIT_NOT_FOUND or time.monotonic() >= deadline:
                if exc.code == EXIT_NOT_FOUND and args.watch:
                    raise ApiError(EXIT_NOT_FOUND, f"{exc} (no event within --wait {args.wait:g}s)") from None
                raise
            if not said:
                print(f"{printable(args.trace_id)}: no event yet, waiting up to {args.wait:g}s for the first one",
                      flush=True)
                said = True
            await asyncio.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))


def cmd_status(args, settings: Settings) -> int:
    async def work(session):
        last = None
        body = await _first_state(session, args)
        while True:
            if args.watch and not body["done"]:
                if body["status"] != last:  # one line per change, not a screen per poll
                    print(f"{printable(body['trace_id'])}: {body['status']}, {body['event_count']} event(s), "
                          "not done yet", flush=True)
                    last = body["status"]
                await asyncio.sleep(args.interval)
                body = await _get(session, args.api, f"/v1/traces/{args.trace_id}")
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

    return _run_api(args, work)


SEARCH_FILTERS = ("service", "status", "done", "account", "org_id", "inventory_id", "system_id", "source",
                  "domain", "domain_id", "since", "until", "lookback", "min_duration", "max_duration")


def cmd_search(args, settings: Settings) -> int:
    async def work(session):
        params = {k: getattr(args, k) for k in SEARCH_FILTERS}
        params["limit"] = args.limit
        body = await _get(session, args.api, "/v1/traces", params)
        if args.format == "json":
            print(json.dumps(body, indent=2))
            return 0
        print(table([(t["trace_id"], "yes" if t["done"] else "no", t["status"], t["first_seen"],
                      f"{t['elapsed_seconds']:.3f}", t["event_count"], t["error_count"]) for t in body["data"]],
                    ("Trace ID", "Done", "Status", "First seen", "Elapsed (s)", "Events", "Errors")))
        if body["next_cursor"]:
            print("(more: narrow the filters or raise --limit, at most 1000)", file=sys.stderr)
        return 0

    return _run_api(args, work)


def cmd_services(args, settings: Settings) -> int:
    async def work(session):
        body = await _get(session, args.api, "/v1/services", {"lookback": args.lookback})
        if args.format == "json":
            print(json.dumps(body, indent=2))
        else:
            print(table([(s["service"], s["events"], s["success"], s["error"]) for s in body["data"]],
                        ("Service", "Events", "Success", "Error")))
        return 0

    return _run_api(args, work)


def cmd_stats(args, settings: Settings) -> int:
    async def work(session):
        services = (await _get(session, args.api, "/v1/services", {"lookback": args.lookback}))["data"]
        elapsed = {e["service"]: e for e in
                   (await _get(session, args.api, "/v1/stats/elapsed", {"lookback": args.lookback}))["data"]}
        rows = []
        for s in services:
            outcomes = s["success"] + s["error"]
            rate = f"{100 * s['success'] / outcomes:.1f}%" if outcomes else None
            p95 = elapsed.get(s["service"], {}).get("p95")
            rows.append((s["service"], s["events"], s["success"], s["error"], rate,
                         f"{p95:.3f}" if p95 is not None else None))
        if args.format == "json":
            print(json.dumps([dict(zip(("service", "events", "success", "error", "success_rate", "p95_seconds"), r))
                              for r in rows], indent=2))
        else:
            print(table(rows, ("Service", "Events", "Success", "Error", "Success rate", "p95 elapsed (s)")))
        return 0

    return _run_api(args, work)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", help="the API's base URL (default: TRACKER_API_URL)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="run the consumer and the API (starting local Kafka/PostgreSQL if none is set)"
                   ).set_defaults(func=cmd_up)
    sub.add_parser("migrate", help="apply the database migrations (a no-op when up to date)"
                   ).set_defaults(func=cmd_migrate)

    sub.add_parser("retention", help="create the coming days' partitions and drop those past TRACKER_RETENTION_DAYS"
                   ).set_defaults(func=cmd_retention)
    sub.add_parser("topics", help="create the events and dead-letter topics if missing"
                   ).set_defaults(func=cmd_topics)

    send = sub.add_parser("send", help="publish one event to Kafka (flags, or a JSON event on stdin)")
    send.add_argument("--trace-id")
    send.add_argument("--service")
    send.add_argument("--status", help="received, success, error, ...")
    send.add_argument("--trace-status", choices=["STARTED", "CONTINUE", "FINISHED"])
    send.add_argument("--message")
    send.add_argument("--operation")
    send.add_argument("--event-id")
    send.add_argument("--timestamp", help="ISO 8601; default now")
    send.add_argument("--body", help="a JSON value stored with the event")
    send.set_defaults(func=cmd_send)

    status = sub.add_parser("status", help="the state of one trace (exit 1 when it failed, 4 when unknown)")
    status.add_argument("trace_id")
    status.add_argument("--format", choices=["table", "json"], default="table")
    status.add_argument("--history", action="store_true", help="also one row per event")
    status.add_argument("--watch", action="store_true",
                        help="poll until the trace is done; exit 0 if it succeeded, 1 if it failed")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --watch")
    status.add_argument("--wait", type=float, default=60.0,
                        help="with --watch: seconds to wait for the trace's first event before exit 4 (default 60)")
    status.set_defaults(func=cmd_status)

    search = sub.add_parser("search", help="traces matching filters, newest first")
    for name in SEARCH_FILTERS:
        if name == "done":
            search.add_argument("--done", type=lambda v: v.lower() in ("true", "yes", "1"), default=None,
                                metavar="true|false")
        else:
            search.add_argument("--" + name.replace("_", "-"), dest=name)
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--format", choices=["table", "json"], default="table")
    search.set_defaults(func=cmd_search)

    services = sub.add_parser("services", help="services seen in a window, with counts")
    services.add_argument("--lookback", default="24h")
    services.add_argument("--format", choices=["table", "json"], default="table")
    services.set_defaults(func=cmd_services)

    stats = sub.add_parser("stats", help="per service: counts, success rate, p95 elapsed")
    stats.add_argument("--lookback", default="24h")
    stats.add_argument("--format", choices=["table", "json"], default="table")
    stats.set_defaults(func=cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        args.api = getattr(args, "api", None) or settings.api_url
        setup_logging(settings.log_level if args.command == "up" else "WARNING")
        return args.func(args, settings)
    except SettingsError as exc:
        print(f"tracker {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
