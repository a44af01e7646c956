"""The `tracker` command: run the stack, migrate, send an event, ask for a trace's status.

Exit codes: 0 success; 1 the trace failed (status) or the operation failed;
2 bad usage or invalid input; 3 the API or Kafka is unreachable; 4 unknown trace."""

from __future__ import annotations

import argparse
import sys

from tracker.cli import tokens
from tracker.cli.admin import cmd_grant_reader, cmd_migrate, cmd_retention, cmd_topics, cmd_up
from tracker.cli.exits import EXIT_USAGE
from tracker.cli.reading import SEARCH_FILTERS, cmd_search, cmd_services, cmd_stats, cmd_status
from tracker.cli.sending import cmd_send
from tracker.logs import setup_logging
from tracker.settings import Settings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", help="the API's base URL (default: TRACKER_API_URL)")
    parser.add_argument("--token", help="the API's bearer token (default: TRACKER_API_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the consumer and the API (starting local Kafka/PostgreSQL if none is set)")
    up.add_argument(
        "--consumers", type=int, help="consumer processes, one group (default: TRACKER_CONSUMER_PROCESSES, 1)"
    )
    up.add_argument("--api-workers", type=int, help="API worker processes (default: TRACKER_API_WORKERS, 1)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("migrate", help="apply the database migrations (a no-op when up to date)").set_defaults(
        func=cmd_migrate
    )

    sub.add_parser(
        "retention", help="create the coming days' partitions and drop those past TRACKER_RETENTION_DAYS"
    ).set_defaults(func=cmd_retention)
    sub.add_parser("topics", help="create the events and dead-letter topics if missing").set_defaults(func=cmd_topics)

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
    status.add_argument(
        "--watch", action="store_true", help="poll until the trace is done; exit 0 if it succeeded, 1 if it failed"
    )
    status.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --watch")
    status.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="with --watch: seconds to wait for the trace's first event before exit 4 (default 60)",
    )
    status.set_defaults(func=cmd_status)

    search = sub.add_parser("search", help="traces matching filters, newest first")
    for name in SEARCH_FILTERS:
        if name == "done":
            search.add_argument(
                "--done", type=lambda v: v.lower() in ("true", "yes", "1"), default=None, metavar="true|false"
            )
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
    tokens.add_parser(sub)
    reader = sub.add_parser(
        "grant-reader", help="let an existing PostgreSQL role read this database, as the API needs, and no more"
    )
    reader.add_argument("role")
    reader.set_defaults(func=cmd_grant_reader)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        args.api = getattr(args, "api", None) or settings.api_url
        args.token = getattr(args, "token", None) or settings.api_token
        setup_logging(settings.log_level if args.command == "up" else "WARNING")
        return args.func(args, settings)
    except SettingsError as exc:
        print(f"tracker {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
