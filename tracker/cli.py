"""The `tracker` command: run the stack, migrate, send an event, ask for a trace's status.

Exit codes: 0 success; 1 the trace failed (status) or the operation failed;
2 bad usage or invalid input; 3 the API or Kafka is unreachable; 4 unknown trace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
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
                                        settings.topic_partitions))
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
        event["body"] = json.loads(args.body)
    return event


def cmd_send(args, settings: Settings) -> int:
    from tracker.events import Invalid, parse_document
    from tracker.producer import send_one

    if not settings.kafka_bootstrap_servers:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS must be set")
    if args.trace_id is not None and not (args.service and args.status):
        raise SettingsError("--service and --status are required with --trace-id")
    event = _event_from_args(args)
    parsed = parse_document(event)
    if isinstance(parsed, Invalid):
        print(f"tracker send: invalid event ({parsed.reason}): {parsed.detail}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(send_one(settings, event, key=parsed.trace_id))
    except Exception as exc:  # any Kafka failure: say so in one line
        print(f"tracker send: Kafka at {settings.kafka_bootstrap_servers} did not take the event: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps({"sent": True, "topic": settings.topic, "trace_id": parsed.trace_id,
                      "event_id": parsed.event_id}))
    return 0


def cmd_status(args, settings: Settings) -> int:
    import aiohttp

    async def fetch():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{args.api.rstrip('/')}/v1/traces/{args.trace_id}") as response:
                return response.status, await response.json(content_type=None)

    try:
        code, body = asyncio.run(fetch())
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        print(f"tracker status: the API at {args.api} is unreachable ({exc})", file=sys.stderr)
        return EXIT_UNREACHABLE
    if code == 404:
        print(f"tracker status: {body.get('detail', 'unknown trace')}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if code != 200:
        print(f"tracker status: the API answered {code}: {body.get('detail', body)}", file=sys.stderr)
        return EXIT_FAILED
    if args.format == "json":
        print(json.dumps(body, indent=2))
    else:
        errors = "; ".join(e["message"] for e in body["errors"]) or "-"
        rows = [("Done", "Trace ID", "Status", "Elapsed (s)", "Errors"),
                ("yes" if body["done"] else "no", body["trace_id"], body["status"],
                 f"{body['elapsed_seconds']:.3f}", errors)]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return EXIT_FAILED if body["status"] == "failed" else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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

    status = sub.add_parser("status", help="the state of one trace")
    status.add_argument("trace_id")
    status.add_argument("--format", choices=["table", "json"], default="table")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "status":
            args.api = settings.api_url
        setup_logging(settings.log_level if args.command == "up" else "WARNING")
        return args.func(args, settings)
    except SettingsError as exc:
        print(f"tracker {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
